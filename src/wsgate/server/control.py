"""The HTTP control API: the backend verbs as JSON over HTTP, behind API keys.

:func:`control_app` is a plain ASGI 3 application (no web framework) over a
started :class:`~wsgate.node.Node`; ``wsgate serve`` runs it with uvicorn on
``api_port`` when ``api_keys`` are configured (:class:`ControlServer`).

Every route under ``/api/`` needs a key, as ``Authorization: Bearer KEY`` or
``X-API-Key: KEY`` (missing: 401, wrong: 403). ``GET /openapi.json`` (no key)
describes them all. Payloads are ``{"data": JSON}`` or ``{"bin": base64}`` for
bytes; byte replies come back as ``{"bin": ...}``. Errors are
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import msgspec

from wsgate.errors import (
    BrokerError,
    ConfigError,
    ConnectionLost,
    InvalidState,
    NotConnected,
    RemoteError,
    RequestTimeout,
)

if TYPE_CHECKING:
    from wsgate.node import Node

__all__ = ["MAX_BODY", "ASGIApp", "ControlServer", "control_app", "openapi_document"]

log = logging.getLogger("wsgate.control")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY: Final = 1024 * 1024
"""Largest request body in bytes (413 beyond)."""
MAX_TIMEOUT: Final = 3600.0
"""Largest ``timeout`` of ``/api/request``, in seconds."""


class HttpError(Exception):
    """Ends a request with ``status`` and an error object."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Sequence[tuple[str, str]] = (),
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)
        self.extra = extra


def _bad(message: str) -> HttpError:
    return HttpError(400, "bad_request", message)


# -- input ----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _bad("the body must be a JSON object")
    return value


def _check_fields(
    body: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    for name in required:
        if name not in body:
            raise _bad(f"missing field {name!r}")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}")


def _string(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not value:
        raise _bad(f"{name!r} must be a non-empty string")
    return value


def _payload(body: dict[str, Any]) -> Any:
    """The payload of a body: ``data`` (any JSON) or ``bin`` (base64 bytes), exactly one."""
    if ("data" in body) == ("bin" in body):
        raise _bad("give exactly one of 'data' (JSON) and 'bin' (base64 bytes)")
    if "data" in body:
        return body["data"]
    text = body["bin"]
    if not isinstance(text, str):
        raise _bad("'bin' must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise _bad("'bin' is not valid base64") from None


def _reply(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bin": base64.b64encode(bytes(value)).decode("ascii")}
    return {"data": value}


# -- the application ------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    method: str
    handler: Callable[[Node, dict[str, Any], str], Awaitable[Any]]
    body: bool = False
    """Takes a JSON body."""


async def _publish(node: Node, body: dict[str, Any], _arg: str) -> Any:
    _check_fields(body, ("topic",), ("data", "bin"))
    await node.publish(_string(body, "topic"), _payload(body))
    return {"ok": True}


async def _send(node: Node, body: dict[str, Any], _arg: str) -> Any:
    _check_fields(body, ("connection_id",), ("data", "bin"))
    return {"delivered": await node.send(_string(body, "connection_id"), _payload(body))}


async def _send_to_user(node: Node, body: dict[str, Any], _arg: str) -> Any:
    _check_fields(body, ("user",), ("data", "bin"))
    return {"reached": await node.send_to_user(_string(body, "user"), _payload(body))}


async def _broadcast(node: Node, body: dict[str, Any], _arg: str) -> Any:
    _check_fields(body, (), ("data", "bin"))
    await node.broadcast(_payload(body))
    return {"ok": True}


async def _request(node: Node, body: dict[str, Any], _arg: str) -> Any:
    _check_fields(body, ("connection_id",), ("data", "bin", "timeout"))
    connection_id = _string(body, "connection_id")
    payload = _payload(body)
    timeout = body.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise _bad("'timeout' must be a number of seconds")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise _bad(f"'timeout' must be above 0 and at most {MAX_TIMEOUT:g}")
        timeout = float(timeout)
    try:
        return _reply(await node.request(connection_id, payload, timeout))
    except NotConnected:
        raise HttpError(404, "not_connected", f"no live connection {connection_id}") from None
    except RequestTimeout as exc:
        raise HttpError(504, "timeout", f"no reply within {exc.timeout:g} s") from None
    except ConnectionLost:
        raise HttpError(410, "connection_lost", "the connection closed before replying") from None
    except RemoteError as exc:
        raise HttpError(
            502,
            "remote_error",
            f"the client replied with error {exc.code!r}",
            remote={"code": exc.code, "message": exc.remote_message, "data": exc.data},
        ) from None


async def _disconnect(node: Node, body: dict[str, Any], _arg: str) -> Any:
    _check_fields(body, ("connection_id",), ("code", "reason"))
    connection_id = _string(body, "connection_id")
    kwargs: dict[str, Any] = {}
    code = body.get("code")
    if code is not None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise _bad("'code' must be an integer close code")
        kwargs["code"] = code
    reason = body.get("reason")
    if reason is not None:
        if not isinstance(reason, str):
            raise _bad("'reason' must be a string")
        kwargs["reason"] = reason
    return {"disconnected": await node.disconnect(connection_id, **kwargs)}


async def _connection(node: Node, _body: dict[str, Any], connection_id: str) -> Any:
    info = await node.connection_info(connection_id)
    if info is None:
        raise HttpError(404, "not_found", f"no live connection {connection_id}")
    return info


async def _presence(node: Node, _body: dict[str, Any], query: str) -> Any:
    try:
        params = parse_qs(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _bad("the query string is not valid") from None
    values = params.get("topic")
    if not values or len(values) != 1 or not values[0]:
        raise _bad("give one 'topic' query parameter")
    return {"connections": await node.presence(values[0])}


async def _stats(node: Node, _body: dict[str, Any], _arg: str) -> Any:
    return await node.stats()


_ROUTES: Final[dict[str, _Route]] = {
    "/api/publish": _Route("POST", _publish, body=True),
    "/api/send": _Route("POST", _send, body=True),
    "/api/send_to_user": _Route("POST", _send_to_user, body=True),
    "/api/broadcast": _Route("POST", _broadcast, body=True),
    "/api/request": _Route("POST", _request, body=True),
    "/api/disconnect": _Route("POST", _disconnect, body=True),
    "/api/presence": _Route("GET", _presence),
    "/api/stats": _Route("GET", _stats),
}
_CONNECTIONS: Final = "/api/connections/"


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", ())}


def _credential(headers: dict[bytes, bytes]) -> bytes | None:
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    key = headers.get(b"x-api-key")
    if key is not None and key.strip():
        return key.strip()
    return None


async def _read_body(scope: Scope, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise HttpError(413, "too_large", f"the body is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "bad_request", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HttpError(413, "too_large", f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, value: Any, headers: Sequence[tuple[str, str]] = ()
) -> None:
    body = msgspec.json.encode(value)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _dispatch(
    node: Node,
    authorized: Callable[[bytes], bool],
    *,
    scope: Scope,
    receive: Receive,
    path: str,
    method: str,
) -> Any:
    arg = ""
    if path.startswith(_CONNECTIONS) and len(path) > len(_CONNECTIONS):
        route = _Route("GET", _connection)
        arg = path[len(_CONNECTIONS) :]
    elif path in _ROUTES:
        route = _ROUTES[path]
    else:
        raise HttpError(404, "not_found", "no such route")
    if method != route.method:
        raise HttpError(405, "method_not_allowed", f"use {route.method}", [("allow", route.method)])
    headers = _headers(scope)
    credential = _credential(headers)
    if credential is None:
        raise HttpError(
            401,
            "unauthorized",
            "an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)",
            [("www-authenticate", "Bearer")],
        )
    if not authorized(credential):
        raise HttpError(403, "forbidden", "the API key is not valid")
    body: dict[str, Any] = {}
    if route.body:
        body = _parse_body(await _read_body(scope, receive, headers))
    if route.handler is _presence:
        arg = scope.get("query_string", b"").decode("latin-1")
    try:
        return await route.handler(node, body, arg)
    except (InvalidState, ValueError, TypeError, OverflowError) as exc:
        # InvalidTopic, an unsendable close code, a payload that cannot be encoded
        raise _bad(str(exc)) from None
    except BrokerError as exc:
        raise HttpError(503, "broker_unavailable", str(exc)) from None


def control_app(node: Node, api_keys: Sequence[str]) -> ASGIApp:
    """The control API over ``node`` (started by the caller), accepting ``api_keys``.

    Raises:
        ConfigError: no keys (the API is off without keys) or an empty key.
    """
    if not api_keys:
        raise ConfigError("the control API needs at least one API key")
    if not all(api_keys):
        raise ConfigError("API keys must not be empty")
    keys = tuple(key.encode("utf-8") for key in api_keys)
    document = msgspec.json.encode(openapi_document())

    def authorized(credential: bytes) -> bool:
        # Compare with every key, always: the time taken does not tell which matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(credential, key)
        return matched

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return  # lifespan: nothing to set up
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/openapi.json":
            if method != "GET":
                await _error(
                    send, HttpError(405, "method_not_allowed", "use GET", [("allow", "GET")])
                )
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(document)).encode("ascii")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": document})
            return
        try:
            result = await _dispatch(
                node, authorized, scope=scope, receive=receive, path=path, method=method
            )
        except HttpError as exc:
            await _error(send, exc)
            return
        except Exception:
            log.exception("control API %s %s failed", method, path)
            await _error(send, HttpError(500, "internal", "internal error"))
            return
        await _respond(send, 200, result)

    return app


async def _error(send: Send, exc: HttpError) -> None:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, **exc.extra}
    await _respond(send, exc.status, {"error": error}, exc.headers)


# -- serving --------------------------------------------------------------------------


class ControlServer:
    """The control API served by uvicorn on ``host:port`` (0: any free port)."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        import uvicorn  # noqa: PLC0415 - only nodes with API keys need it

        self._host = host
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning")
        )

    async def start(self) -> None:
        """Listen (without uvicorn's signal handlers: the node's own stop it).

        Raises:
            ConfigError: the address cannot be bound.
        """
        server = self._server
        config = server.config
        if not config.loaded:
            config.load()
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup()
        except SystemExit:  # uvicorn exits when it cannot bind
            raise ConfigError(
                f"cannot listen for the control API on {self._host}:{config.port}"
            ) from None

    @property
    def port(self) -> int:
        """The bound port."""
        for listener in self._server.servers:
            for sock in listener.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the control API is not listening")

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/api/"

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._server.shutdown()


# -- OpenAPI --------------------------------------------------------------------------

_JSON: Final = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_ref("Error"))}


def _payload_body(
    required: dict[str, Any], optional: dict[str, Any] | None = None
) -> dict[str, Any]:
    properties = {
        **required,
        **(optional or {}),
        "data": {"description": "the payload, any JSON value"},
        "bin": {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": "^[A-Za-z0-9+/]*={0,2}$",
            "description": "the payload as bytes, base64 (instead of data)",
        },
    }
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        "oneOf": [{"required": ["data"]}, {"required": ["bin"]}],
    }


def _operation(
    summary: str,
    ok: dict[str, Any],
    errors: dict[str, str],
    *,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "done", "content": _content(ok)}}
    if body is not None:
        errors = {
            "400": "invalid body (not JSON, wrong types, invalid topic or close code)",
            "413": f"body over {MAX_BODY} bytes",
            **errors,
        }
    errors = {
        "401": "no API key",
        "403": "wrong API key",
        "503": "the broker is unreachable",
        **errors,
    }
    for status, text in sorted(errors.items()):
        responses[status] = _error_response(text)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _content(body)}
    if parameters:
        operation["parameters"] = parameters
    return operation


_STRING_ID: Final = {"type": "string", "minLength": 1}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the control API."""
    topic = {
        "type": "string",
        "minLength": 1,
        "description": "a concrete dotted topic (no wildcards)",
        "examples": ["news.tech"],
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "enum": [
                                "bad_request",
                                "unauthorized",
                                "forbidden",
                                "not_found",
                                "method_not_allowed",
                                "too_large",
                                "not_connected",
                                "timeout",
                                "connection_lost",
                                "remote_error",
                                "broker_unavailable",
                                "internal",
                            ],
                        },
                        "message": {"type": "string"},
                        "remote": {
                            "type": "object",
                            "description": "with remote_error: the error the client replied",
                            "required": ["code", "message", "data"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "data": {},
                            },
                        },
                    },
                }
            },
        },
        "Ok": {
            "type": "object",
            "required": ["ok"],
            "properties": {"ok": {"const": True}},
        },
        "Reply": {
            "type": "object",
            "description": "the client's reply: data (JSON) or bin (bytes, base64)",
            "oneOf": [
                {"required": ["data"], "properties": {"data": {}}, "additionalProperties": False},
                {
                    "required": ["bin"],
                    "properties": {"bin": {"type": "string", "contentEncoding": "base64"}},
                    "additionalProperties": False,
                },
            ],
        },
        "ConnectionInfo": {
            "type": "object",
            "required": [
                "id",
                "node",
                "user",
                "subscriptions",
                "connected_at",
                "remote_address",
                "encoding",
                "meta",
            ],
            "properties": {
                "id": {"type": "string"},
                "node": {"type": "string"},
                "user": {"type": ["string", "null"]},
                "subscriptions": {"type": "array", "items": {"type": "string"}},
                "connected_at": {"type": "number"},
                "remote_address": {"type": ["string", "null"]},
                "encoding": {"type": "string"},
                "meta": {"type": "object"},
            },
        },
        "Stats": {
            "type": "object",
            "required": ["node"],
            "properties": {"node": {"type": "string"}},
            "additionalProperties": {"type": "number"},
        },
    }
    paths: dict[str, Any] = {
        "/api/publish": {
            "post": _operation(
                "publish a payload to a topic (every subscriber on every node)",
                _ref("Ok"),
                {},
                body=_payload_body({"topic": topic}),
            )
        },
        "/api/send": {
            "post": _operation(
                "push a payload to one connection",
                {
                    "type": "object",
                    "required": ["delivered"],
                    "properties": {"delivered": {"type": "boolean"}},
                },
                {},
                body=_payload_body({"connection_id": _STRING_ID}),
            )
        },
        "/api/send_to_user": {
            "post": _operation(
                "push a payload to every connection of a user",
                {
                    "type": "object",
                    "required": ["reached"],
                    "properties": {"reached": {"type": "integer", "minimum": 0}},
                },
                {},
                body=_payload_body({"user": _STRING_ID}),
            )
        },
        "/api/broadcast": {
            "post": _operation(
                "push a payload to every connection", _ref("Ok"), {}, body=_payload_body({})
            )
        },
        "/api/request": {
            "post": _operation(
                "send a request to one connection and return its reply",
                _ref("Reply"),
                {
                    "404": "not_connected: no live connection has the id",
                    "410": "connection_lost: it closed before replying",
                    "502": "remote_error: the client replied with an error (see remote)",
                    "504": "timeout: no reply in time",
                },
                body=_payload_body(
                    {"connection_id": _STRING_ID},
                    {
                        "timeout": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": MAX_TIMEOUT,
                            "description": "seconds to wait (default: request_timeout)",
                        }
                    },
                ),
            )
        },
        "/api/disconnect": {
            "post": _operation(
                "close one connection",
                {
                    "type": "object",
                    "required": ["disconnected"],
                    "properties": {"disconnected": {"type": "boolean"}},
                },
                {},
                body={
                    "type": "object",
                    "required": ["connection_id"],
                    "additionalProperties": False,
                    "properties": {
                        "connection_id": _STRING_ID,
                        "code": {
                            "type": "integer",
                            "description": "close code, 1000 or 3000-4999 (default 4000)",
                        },
                        "reason": {"type": "string", "description": "at most 120 characters sent"},
                    },
                },
            )
        },
        "/api/connections/{connection_id}": {
            "get": _operation(
                "what is known about one connection",
                _ref("ConnectionInfo"),
                {"404": "not_found: no live connection has the id"},
                parameters=[
                    {
                        "name": "connection_id",
                        "in": "path",
                        "required": True,
                        "schema": _STRING_ID,
                    }
                ],
            )
        },
        "/api/presence": {
            "get": _operation(
                "every connection that would receive a publication on a topic",
                {
                    "type": "object",
                    "required": ["connections"],
                    "properties": {
                        "connections": {"type": "array", "items": _ref("ConnectionInfo")}
                    },
                },
                {"400": "missing or invalid topic"},
                parameters=[{"name": "topic", "in": "query", "required": True, "schema": topic}],
            )
        },
        "/api/stats": {"get": _operation("counters and gauges of this node", _ref("Stats"), {})},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wsgate control API",
            "version": "1",
            "description": "The backend verbs of a wsgate node over HTTP. Bytes payloads "
            "travel as {'bin': base64} instead of {'data': JSON}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
