"""The ``wsgate`` commands that talk to a running gateway (``listen``, ``publish``, ...).

``listen`` is a client of the gateway (the client SDK, with a token). The other
commands are backend verbs: they reach the gateway's nodes through a
:class:`Gateway` that :func:`choose_transport` opens. Today the only transport
is the broker itself (the backend SDK, ``--broker redis://...``) or a node's HTTP
control API (``--url http://... --api-key KEY``).

Output is JSON on stdout; bytes are shown as ``{"$bytes_b64": "..."}``. Exit
status: 0 on success, 1 when something could not be delivered or was not found
(see :data:`FAILED`), 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode, urlsplit

from wsgate import (
    Backend,
    BrokerError,
    Client,
    CloseCode,
    ConnectionClosed,
    ConnectionInfo,
    ConnectionLost,
    DeliveryError,
    NotConnected,
    RemoteError,
    RequestTimeout,
    WsgateError,
    connect,
    connect_backend,
    load_config,
)
from wsgate.cluster import info_from_payload

__all__ = ["COMMANDS", "FAILED", "USAGE", "Gateway", "add_commands", "choose_transport", "run"]

FAILED: Final = 1
"""Exit status: not delivered, not found, remote error, closed by the gateway."""
USAGE: Final = 2
"""Exit status: bad arguments or configuration."""

_BYTES_KEY: Final = "$bytes_b64"


class CommandFailed(Exception):
    """A command ends with an error line on stderr and ``status``."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


# -- data in and out ------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_data(text: str, *, raw: bool) -> Any:
    """DATA as given: JSON when it parses, else the string; bytes with ``raw``; ``-``: stdin."""
    if text == "-":
        if raw:
            return sys.stdin.buffer.read()
        text = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif raw:
        return text.encode("utf-8")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def to_json(value: Any) -> Any:
    """``value`` with bytes as ``{"$bytes_b64": ...}``, keys as strings, dataclasses as maps."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else json.dumps(to_json(k))): to_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def emit(value: Any) -> None:
    """Print ``value`` as one JSON line and flush (listeners read line by line)."""
    sys.stdout.write(json.dumps(to_json(value), ensure_ascii=False, default=repr) + "\n")
    sys.stdout.flush()


# -- the transport --------------------------------------------------------------------


class Gateway(Protocol):
    """What the backend commands need from a gateway, whatever the transport."""

    async def publish(self, topic: str, data: Any) -> None: ...
    async def send(self, connection_id: str, data: Any) -> bool: ...
    async def send_to_user(self, user: str, data: Any) -> int: ...
    async def broadcast(self, data: Any) -> None: ...
    async def request(self, connection_id: str, data: Any, timeout: float | None = None) -> Any: ...
    async def disconnect(self, connection_id: str, code: int, reason: str) -> bool: ...
    async def connection_info(self, connection_id: str) -> ConnectionInfo | None: ...
    async def presence(self, topic: str) -> list[ConnectionInfo]: ...
    async def nodes(self) -> list[str]: ...
    async def stats(self) -> dict[str, Any]: ...


class Transport(Protocol):
    def open(self) -> contextlib.AbstractAsyncContextManager[Gateway]: ...


@dataclass(frozen=True)
class BrokerTransport:
    """Straight through the nodes' broker, with the backend SDK (no node involved)."""

    url: str
    prefix: str

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Gateway]:
        async with connect_backend(self.url, prefix=self.prefix) as backend:
            yield _BackendGateway(backend)


class _BackendGateway:
    """A :class:`Gateway` over a started :class:`wsgate.Backend`."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def publish(self, topic: str, data: Any) -> None:
        await self._backend.publish(topic, data)

    async def send(self, connection_id: str, data: Any) -> bool:
        return await self._backend.send(connection_id, data)

    async def send_to_user(self, user: str, data: Any) -> int:
        return await self._backend.send_to_user(user, data)

    async def broadcast(self, data: Any) -> None:
        await self._backend.broadcast(data)

    async def request(self, connection_id: str, data: Any, timeout: float | None = None) -> Any:
        return await self._backend.request(connection_id, data, timeout)

    async def disconnect(self, connection_id: str, code: int, reason: str) -> bool:
        return await self._backend.disconnect(connection_id, code, reason)

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        return await self._backend.connection_info(connection_id)

    async def presence(self, topic: str) -> list[ConnectionInfo]:
        return await self._backend.presence(topic)

    async def nodes(self) -> list[str]:
        return await self._backend.presence_backend.nodes()

    async def stats(self) -> dict[str, Any]:
        return await self._backend.stats()


@dataclass(frozen=True)
class HttpTransport:
    """Through a node's HTTP control API (``--url http://HOST:API_PORT``), with an API key."""

    url: str
    api_key: str = dataclasses.field(repr=False)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Gateway]:
        yield _HttpGateway(self.url, self.api_key)


class _HttpGateway:
    """A :class:`Gateway` over the control API; urllib calls run in a thread."""

    def __init__(self, url: str, api_key: str) -> None:
        base = url.rstrip("/")
        self._base = base.removesuffix("/api") + "/api/"
        self._api_key = api_key

    def _call_sync(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("X-API-Key", self._api_key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandFailed(f"cannot reach the control API at {self._base}: {reason}") from None
        try:
            return status, json.loads(raw)
        except ValueError:
            raise CommandFailed(
                f"the control API at {self._base} answered HTTP {status} without JSON"
            ) from None

    async def _call(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> tuple[int, Any]:
        status, answer = await asyncio.to_thread(self._call_sync, method, path, body, timeout)
        if status in (401, 403):
            raise CommandFailed(
                f"the control API refused the API key (HTTP {status}): check --api-key "
                "or WSGATE_API_KEY"
            )
        return status, answer

    @staticmethod
    def _fail(status: int, answer: Any) -> Exception:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        message = str(error.get("message", f"HTTP {status}"))
        if status == 400:
            return CommandFailed(message, USAGE)
        if status == 503:
            return BrokerError(message, temporary=True)
        return CommandFailed(f"the control API answered HTTP {status}: {message}")

    @staticmethod
    def _payload(data: Any) -> dict[str, Any]:
        if isinstance(data, bytes | bytearray | memoryview):
            return {"bin": base64.b64encode(bytes(data)).decode("ascii")}
        return {"data": data}

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        status, answer = await self._call("POST", path, body)
        if status != 200:
            raise self._fail(status, answer)
        return answer

    async def publish(self, topic: str, data: Any) -> None:
        await self._post("publish", {"topic": topic, **self._payload(data)})

    async def send(self, connection_id: str, data: Any) -> bool:
        answer = await self._post("send", {"connection_id": connection_id, **self._payload(data)})
        return bool(answer["delivered"])

    async def send_to_user(self, user: str, data: Any) -> int:
        answer = await self._post("send_to_user", {"user": user, **self._payload(data)})
        return int(answer["reached"])

    async def broadcast(self, data: Any) -> None:
        await self._post("broadcast", self._payload(data))

    async def request(self, connection_id: str, data: Any, timeout: float | None = None) -> Any:
        body: dict[str, Any] = {"connection_id": connection_id, **self._payload(data)}
        if timeout is not None:
            body["timeout"] = timeout
        status, answer = await self._call("POST", "request", body, timeout=(timeout or 10.0) + 30.0)
        if status == 200:
            if "bin" in answer:
                return base64.b64decode(answer["bin"])
            return answer.get("data")
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        code = error.get("code")
        if code == "not_connected":
            raise NotConnected(connection_id)
        if code == "timeout":
            raise RequestTimeout(connection_id, timeout or 0.0)
        if code == "connection_lost":
            raise ConnectionLost(connection_id)
        if code == "remote_error":
            remote = error.get("remote", {})
            raise RemoteError(
                str(remote.get("code", "")), str(remote.get("message", "")), remote.get("data")
            )
        raise self._fail(status, answer)

    async def disconnect(self, connection_id: str, code: int, reason: str) -> bool:
        answer = await self._post(
            "disconnect", {"connection_id": connection_id, "code": code, "reason": reason}
        )
        return bool(answer["disconnected"])

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        status, answer = await self._call("GET", "connections/" + quote(connection_id, safe=""))
        if status == 404:
            return None
        if status != 200:
            raise self._fail(status, answer)
        return info_from_payload(answer)

    async def presence(self, topic: str) -> list[ConnectionInfo]:
        status, answer = await self._call("GET", "presence?" + urlencode({"topic": topic}))
        if status != 200:
            raise self._fail(status, answer)
        return [info_from_payload(item) for item in answer["connections"]]

    async def nodes(self) -> list[str]:
        raise CommandFailed("status needs the broker (--broker), not the control API", USAGE)

    async def stats(self) -> dict[str, Any]:
        raise CommandFailed("status needs the broker (--broker), not the control API", USAGE)


def choose_transport(args: argparse.Namespace) -> Transport:
    """The one place deciding how a backend command reaches the gateway.

    Raises:
        CommandFailed: (status 2) no usable broker configured, or --url without a key.
        ConfigError: the configuration (file, environment, flags) is invalid.
    """
    if getattr(args, "url", None):
        if urlsplit(args.url).scheme not in ("http", "https"):
            raise CommandFailed(f"--url must be http://HOST:PORT, got {args.url!r}", USAGE)
        api_key = getattr(args, "api_key", None) or os.environ.get("WSGATE_API_KEY")
        if not api_key:
            raise CommandFailed("--url needs an API key: --api-key KEY or WSGATE_API_KEY", USAGE)
        return HttpTransport(args.url, api_key)
    config = load_config(args.config, overrides={"broker": args.broker, "prefix": args.prefix})
    url = config.broker.broker
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        raise CommandFailed(
            f"the broker is {url}, which only joins nodes inside one process: pass "
            "--broker redis://HOST:PORT/DB (or set WSGATE_BROKER) to reach a running gateway",
            USAGE,
        )
    if scheme not in ("redis", "rediss"):
        raise CommandFailed(
            f"unsupported broker URL {url!r} (expected redis:// or rediss://)", USAGE
        )
    return BrokerTransport(url, config.broker.prefix)


# -- the backend commands -------------------------------------------------------------


async def _publish(gw: Gateway, args: argparse.Namespace) -> int:
    await gw.publish(args.topic, args.payload)
    return 0


async def _send(gw: Gateway, args: argparse.Namespace) -> int:
    sent = await gw.send(args.connection_id, args.payload)
    emit(sent)
    return 0 if sent else FAILED


async def _send_user(gw: Gateway, args: argparse.Namespace) -> int:
    reached = await gw.send_to_user(args.user, args.payload)
    emit(reached)
    return 0 if reached else FAILED


async def _broadcast(gw: Gateway, args: argparse.Namespace) -> int:
    await gw.broadcast(args.payload)
    return 0


async def _request(gw: Gateway, args: argparse.Namespace) -> int:
    emit(await gw.request(args.connection_id, args.payload, timeout=args.timeout))
    return 0


async def _disconnect(gw: Gateway, args: argparse.Namespace) -> int:
    closed = await gw.disconnect(args.connection_id, args.code, args.reason)
    emit(closed)
    return 0 if closed else FAILED


async def _info(gw: Gateway, args: argparse.Namespace) -> int:
    info = await gw.connection_info(args.connection_id)
    emit(info)
    return 0 if info is not None else FAILED


async def _presence(gw: Gateway, args: argparse.Namespace) -> int:
    emit(await gw.presence(args.topic))
    return 0


async def _status(gw: Gateway, args: argparse.Namespace) -> int:
    nodes = await gw.nodes()
    stats = await gw.stats()
    per_node = {
        node: {
            "connections": int(stats[node].get("connections", 0)),
            "users": int(stats[node].get("users", 0)),
            "patterns": int(stats[node].get("patterns", 0)),
        }
        for node in nodes
        if isinstance(stats.get(node), dict)
    }
    emit(
        {
            "nodes": nodes,
            "connections": sum(n["connections"] for n in per_node.values()),
            "per_node": per_node,
        }
    )
    return 0


Handler = Callable[[Gateway, argparse.Namespace], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One backend command: its parser and what it runs."""

    help: str
    description: str
    handler: Handler
    arguments: tuple[tuple[str, str], ...] = ()
    """Positional (name, help) pairs before DATA."""
    data: bool = False
    """Takes DATA (and ``--bytes``)."""


_NOT_FOUND = "Exit status 1 when no live node holds the connection."

COMMANDS: Final[dict[str, Command]] = {
    "publish": Command(
        "publish DATA to a topic",
        "Publish DATA to TOPIC: every subscriber on every node receives it. Prints nothing.",
        _publish,
        (("topic", "the topic (dotted name, no wildcards)"),),
        data=True,
    ),
    "send": Command(
        "push DATA to one connection",
        "Push DATA to one connection. Prints true, or false when it was not delivered. "
        + _NOT_FOUND,
        _send,
        (("connection_id", "the connection id (from welcome, info or presence)"),),
        data=True,
    ),
    "send-user": Command(
        "push DATA to every connection of a user",
        "Push DATA to every connection of USER. Prints how many connections were reached; "
        "exit status 1 when none was.",
        _send_user,
        (("user", "the user id (the token's 'sub' claim)"),),
        data=True,
    ),
    "broadcast": Command(
        "push DATA to every connection",
        "Push DATA to every connection of every node. Prints nothing.",
        _broadcast,
        data=True,
    ),
    "request": Command(
        "send a request to one connection and print its reply",
        "Send DATA as a request to one connection and print its reply as JSON. Exit status 1 "
        "when it is not connected, does not reply within --timeout, or replies with an error "
        "(its code is printed).",
        _request,
        (("connection_id", "the connection id"),),
        data=True,
    ),
    "disconnect": Command(
        "close one connection",
        "Close one connection with a close code and reason. Prints true, or false when it was "
        "not connected. " + _NOT_FOUND,
        _disconnect,
        (("connection_id", "the connection id"),),
    ),
    "info": Command(
        "print what is known about one connection",
        "Print what the node holding a connection knows about it (node, user, subscriptions, "
        "address, encoding, meta) as a JSON object, or null. " + _NOT_FOUND,
        _info,
        (("connection_id", "the connection id"),),
    ),
    "presence": Command(
        "list the connections subscribed to a topic",
        "List, as a JSON array of connection objects, every connection on every node "
        "subscribed to a pattern matching TOPIC.",
        _presence,
        (("topic", "the topic (dotted name)"),),
    ),
    "status": Command(
        "list the live nodes, their connections and subscribed patterns",
        'Print {"nodes": [...], "connections": N, "per_node": {node: {"connections", '
        '"users", "patterns"}}} (a node that does not answer within 2 s is listed '
        "without figures).",
        _status,
    ),
}

_DATA_HELP = (
    "DATA is parsed as JSON when it parses (so '\"42\"' is a string and 42 a number), else "
    "sent as the string itself; '-' reads it from standard input (one trailing newline "
    "dropped); --bytes sends it as raw bytes (the UTF-8 of the argument, or standard input "
    "as is)."
)
_EXIT_HELP = (
    'Output is JSON on stdout, bytes shown as {"$bytes_b64": ...}. Exit status: 0 ok, '
    "1 not delivered / not found / remote error / broker unreachable, 2 usage or configuration "
    "error."
)


def _add_target_flags(parser: argparse.ArgumentParser) -> None:
    """How to reach the gateway; see :func:`choose_transport`."""
    group = parser.add_argument_group("reaching the gateway")
    group.add_argument(
        "--broker",
        metavar="URL",
        help="the nodes' broker, redis://HOST:PORT/DB or rediss://... (default: $WSGATE_BROKER)",
    )
    group.add_argument(
        "--prefix",
        metavar="P",
        help="the nodes' broker key prefix (default: $WSGATE_PREFIX, else 'wsgate')",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file to read broker settings from (default: $WSGATE_CONFIG)",
    )
    group.add_argument(
        "--url",
        metavar="URL",
        help="a node's HTTP control API, http://HOST:API_PORT, instead of the broker",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help="the control API's key with --url (default: $WSGATE_API_KEY)",
    )


def _add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the SDK does (connects, reconnects) to stderr",
    )


def add_commands(commands: Any) -> None:
    """Add ``listen`` and the backend commands to the ``wsgate`` subparsers."""
    _add_listen(commands)
    for name, command in COMMANDS.items():
        epilog = (_DATA_HELP + " " if command.data else "") + _EXIT_HELP
        parser = commands.add_parser(
            name, help=command.help, description=command.description, epilog=epilog
        )
        for argument, text in command.arguments:
            parser.add_argument(argument, metavar=argument.upper(), help=text)
        if command.data:
            parser.add_argument("data", metavar="DATA", help="the payload (see below)")
            parser.add_argument(
                "--bytes", action="store_true", help="send DATA as raw bytes, not JSON"
            )
        if name == "request":
            parser.add_argument(
                "--timeout",
                type=float,
                default=10.0,
                metavar="S",
                help="seconds to wait for the reply (default 10)",
            )
        if name == "disconnect":
            parser.add_argument(
                "--code",
                type=int,
                default=int(CloseCode.DISCONNECTED),
                metavar="N",
                help=f"close code, 1000 or 3000-4999 (default {int(CloseCode.DISCONNECTED)})",
            )
            parser.add_argument(
                "--reason", default="", metavar="R", help="close reason (at most 120 characters)"
            )
        _add_target_flags(parser)
        _add_verbose_flag(parser)


# -- listen ---------------------------------------------------------------------------


def _add_listen(commands: Any) -> None:
    listen = commands.add_parser(
        "listen",
        help="subscribe as a client and print the messages",
        description="Connect to the gateway as a client, subscribe to every PATTERN and print "
        'one JSON line per message as it arrives: {"topic": ..., "data": ...}. A message '
        "matching several of the patterns is printed once for each. Messages of one pattern "
        "come in the order they arrived; messages of different patterns that arrive together "
        "(in one burst) may be printed in another order. Once every subscription "
        "is confirmed, a line saying so goes to stderr. The client reconnects after a "
        "reconnectable close (messages published meanwhile are lost).",
        epilog="Exit status: 0 after --count messages or on Ctrl-C (SIGINT) or SIGTERM; 1 when "
        "the gateway closes for good (bad token, ...) or refuses a subscription, or no "
        "connection is made within --timeout; 2 for usage errors.",
    )
    listen.add_argument("url", metavar="URL", help="the gateway's URL, ws://HOST:PORT/ws")
    listen.add_argument(
        "patterns", metavar="PATTERN", nargs="+", help="topic or pattern to subscribe to"
    )
    listen.add_argument("--token", required=True, help="the client's token (see 'wsgate token')")
    listen.add_argument(
        "--encoding",
        choices=("json", "msgpack"),
        default="json",
        help="wire encoding (default json)",
    )
    listen.add_argument(
        "--count", type=int, metavar="N", help="stop after N messages (default: never)"
    )
    listen.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the first connection (default 10)",
    )
    _add_verbose_flag(listen)


async def _listen_body(args: argparse.Namespace, client: Client) -> int:
    try:
        async with asyncio.timeout(args.timeout):
            await client.start()
    except TimeoutError:
        raise CommandFailed(f"no connection to {args.url} within {args.timeout:g} s") from None
    subscriptions = []
    for pattern in args.patterns:
        try:
            subscriptions.append(await client.subscribe(pattern))
        except RemoteError as exc:
            raise CommandFailed(f"cannot subscribe to {pattern!r}: {exc}") from exc
    print(f"wsgate: subscribed to {', '.join(args.patterns)}", file=sys.stderr, flush=True)

    arrived: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(subscription: Any) -> None:
        try:
            async for message in subscription:
                arrived.put_nowait(message)
        except Exception as exc:  # handed to the reader below
            arrived.put_nowait(exc)

    pumps = [asyncio.create_task(pump(s)) for s in subscriptions]
    try:
        printed = 0
        while args.count is None or printed < args.count:
            item = await arrived.get()
            if isinstance(item, BaseException):
                raise item
            emit({"topic": item.topic, "data": item.data})
            printed += 1
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    return 0


async def _listen(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise CommandFailed("--count must be at least 1", USAGE)
    client = connect(args.url, token=args.token, encoding=args.encoding)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    body = asyncio.ensure_future(_listen_body(args, client))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({body, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if body.done():
            return body.result()
        body.cancel()
        await asyncio.gather(body, return_exceptions=True)
        return 0
    finally:
        stopped.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
        await client.close()


# -- running --------------------------------------------------------------------------


async def _backend_command(transport: Transport, args: argparse.Namespace) -> int:
    async with transport.open() as gw:
        return await COMMANDS[args.command].handler(gw, args)


def _describe(exc: Exception) -> tuple[str, int]:
    """The error line and exit status of an exception a command raised."""
    if isinstance(exc, CommandFailed):
        return str(exc), exc.status
    if isinstance(exc, RemoteError):
        message = f"remote error {exc.code!r}"
        if exc.remote_message:
            message += f": {exc.remote_message}"
        if exc.data is not None:
            message += f" (data: {json.dumps(to_json(exc.data), default=repr)})"
        return message, FAILED
    if isinstance(exc, ConnectionClosed):
        return f"the gateway closed the connection: code {exc.code}" + (
            f" ({exc.reason})" if exc.reason else ""
        ), FAILED
    if isinstance(exc, DeliveryError | BrokerError):
        return str(exc), FAILED
    return str(exc), USAGE  # ConfigError, InvalidState (a malformed topic, a bad code...)


def run(args: argparse.Namespace, runner: Callable[[Any], Any]) -> int:
    """Run ``listen`` or a backend command; ``runner`` runs a coroutine (asyncio.run)."""
    # Quiet by default: failures are reported once, as the error line.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "listen":
            return int(runner(_listen(args)))
        args.payload = parse_data(args.data, raw=args.bytes) if "data" in args else None
        return int(runner(_backend_command(choose_transport(args), args)))
    except BrokenPipeError:  # `wsgate listen ... | head`: the reader is gone, fine
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return 0
    except KeyboardInterrupt:
        return 0
    except (WsgateError, CommandFailed) as exc:
        message, status = _describe(exc)
        print(f"wsgate: error: {message}", file=sys.stderr)
        return status
