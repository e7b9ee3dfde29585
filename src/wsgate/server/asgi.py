"""wsgate inside an existing ASGI application (Starlette, FastAPI, ...).

:class:`AsgiGateway` is an ASGI 3 application over one :class:`~wsgate.node.Node`:

* ``websocket`` scopes on ``path`` (default ``config.server.path``, relative to
  where the gateway is mounted) are wsgate connections, with the same door
  checks as the picows listener (origin, subprotocol, connection limit), the
  same authentication (``Authorization: Bearer``, ``?token=`` or a first
  ``auth`` message) and the same session checks and close codes;
* ``http`` scopes under ``/api/`` and ``/openapi.json`` go to the control API
  (:func:`~wsgate.server.control.control_app`) when ``api_keys`` are given;
  everything else is 404;
* ``lifespan`` events start and stop the node. Frameworks do not forward
  lifespan events to mounted applications: pass :meth:`AsgiGateway.lifespan`
  as the application's ``lifespan=`` (or enter it inside your own), or call
  :meth:`~AsgiGateway.startup` / :meth:`~AsgiGateway.shutdown` yourself.

Outbound messages go through a per-connection queue drained by one writer task;
when several messages are waiting they are packed into one frame
(``codec.pack``). ASGI does not show the server's write buffer, so the queue is
bounded by bytes (``max_queue_bytes``): beyond it the connection is closed as a
slow consumer (4000). Keepalive pings are the ASGI server's own (uvicorn's
``ws_ping_interval`` / ``ws_ping_timeout``); one sweep per second per gateway
enforces the authentication deadline (4005) and token expiry (4003).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import parse_qsl

from wsgate.auth import Identity, OriginPolicy
from wsgate.errors import AuthError
from wsgate.node import Node
from wsgate.protocol.codec import Codec
from wsgate.protocol.codes import CloseCode
from wsgate.protocol.messages import Auth
from wsgate.protocol.session import (
    Close,
    Received,
    Reject,
    ServerSession,
    State,
    close_for_auth_error,
)
from wsgate.server.common import (
    Denied,
    close_if_overdue,
    count_close,
    door_check,
    reauthenticate,
    token_from,
    verify,
)
from wsgate.server.control import ASGIApp, Receive, Scope, Send, control_app

__all__ = ["AsgiConnection", "AsgiGateway"]

log = logging.getLogger("wsgate.asgi")

_SWEEP_INTERVAL: Final = 1.0
_PACK_LIMIT: Final = 65_536
"""Largest packed frame: messages are packed while the frame stays under this size."""
_NO_IDENTITY: Final = Identity(user=None)
_DENIAL_CLOSE: Final = {403: 1008, 400: 1002, 503: 1013}
"""Close code of a refused upgrade when the server cannot send an HTTP denial."""


def _route_path(scope: Scope) -> str:
    """The request path relative to where the application is mounted."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class AsgiConnection:
    """A client connection over an ASGI ``websocket`` scope.

    Implements :class:`wsgate.hub.ClientConnection`.
    """

    def __init__(
        self,
        gateway: AsgiGateway,
        codec: Codec,
        send: Send,
        *,
        headers: dict[str, str],
        query: dict[str, str],
        remote_address: str | None,
    ) -> None:
        limits = gateway.node.config.limits
        self.gateway = gateway
        self.node = gateway.node
        self.codec = codec
        self.session = ServerSession(
            codec,
            max_message_size=limits.max_message_size,
            rate_limit=limits.rate_limit,
            rate_burst=limits.rate_burst,
        )
        self.id = ""
        self.identity = _NO_IDENTITY
        self.subscriptions: set[str] = set()
        self.pending_requests: set[int] = set()
        self.inflight_calls = 0
        self.connected_at = time.time()
        self.remote_address = remote_address
        self.accepted_at = time.monotonic()
        self.closing = False
        self.close_code: int | None = None
        self._send = send
        self._headers = headers
        self._query = query
        self._max_queue = limits.max_queue_bytes
        self._pack = gateway.node.config.server.pack_messages
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._close: tuple[int, str] | None = None
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<AsgiConnection {self.id or '(unauthenticated)'} {self.remote_address}>"

    @property
    def user(self) -> str | None:
        return self.identity.user

    @property
    def authenticated(self) -> bool:
        return self.session.state is State.OPEN

    # -- running ----------------------------------------------------------------------

    async def run(self, receive: Receive, token: str | None) -> None:
        """Serve the accepted connection until it is closed (by either side)."""
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write_loop())
        reader = loop.create_task(self._read_loop(receive, token))
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                # We sent the close frame: give the peer time to answer it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(reader), self.node.config.server.shutdown_timeout
                    )
        finally:
            self.closing = True
            self.session.closed()
            self._pending.clear()
            self._pending_bytes = 0
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            for task in (reader, writer):
                if not task.cancelled() and task.exception() is not None:
                    log.error("connection %r failed", self, exc_info=task.exception())
            if self.id:
                self.node.detach(self)

    async def _read_loop(self, receive: Receive, token: str | None) -> None:
        # Authenticate at once with what the upgrade carried; without a token a failure
        # is not final: the client may still send an `auth` message.
        await self._authenticate(token, final=token is not None)
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive":
                continue
            payload: bytes | None = message.get("bytes")
            if payload is None:
                payload = str(message.get("text") or "").encode()
            outcome = self.session.receive(payload, time.monotonic())
            if outcome is not None:
                await self._apply(outcome)

    async def _apply(self, outcome: Received | Reject | Close) -> None:
        if isinstance(outcome, Received):
            message = outcome.message
            if isinstance(message, Auth) and self.authenticated:
                await self._reauthenticate(message)
            elif isinstance(message, Auth):
                await self._authenticate(message.token, final=True)
            else:
                self.node.handle(self, message)
        elif isinstance(outcome, Reject):
            self.node.metrics.bad_requests += 1
            self.deliver(self.codec.encode(outcome.error))
        else:
            count_close(self.node.metrics, outcome.code)
            log.info("closing %r with %d: %s", self, outcome.code, outcome.reason)
            self._close_now(outcome.code, outcome.reason)

    async def _authenticate(self, token: str | None, *, final: bool) -> None:
        try:
            identity = await verify(
                self.node, token, self._headers, self._query, self.remote_address
            )
        except AuthError as exc:
            if not final:
                return
            self.node.metrics.auth_failures += 1
            outcome = close_for_auth_error(exc)
            log.info("authentication failed for %s: %s", self.remote_address, exc)
            self._close_now(outcome.code, outcome.reason)
            return
        if self.closing:
            return
        self.identity = identity
        self.id = identity.connection_id or self.node.new_connection_id()
        self.session.opened()
        await self.node.attach(self)

    async def _reauthenticate(self, message: Auth) -> None:
        await reauthenticate(self.node, self, message, self._headers, self._query)

    # -- outbound ---------------------------------------------------------------------

    def deliver(self, payload: bytes) -> None:
        """Queue one encoded message for the writer task (never blocks)."""
        if self.closing:
            self.node.metrics.dropped_closed += 1
            return
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        if self._pending_bytes > self._max_queue:
            self.node.metrics.slow_consumers += 1
            log.warning(
                "closing %r: slow consumer (outbound queue over %d bytes)", self, self._max_queue
            )
            self._close_now(CloseCode.SLOW_CONSUMER, "slow consumer")
        else:
            self._wake.set()

    # The ASGI server owns the writes; fan-out has no flush of its own to coalesce.
    deliver_fanout = deliver

    def _frames(self, pending: list[bytes]) -> list[bytes]:
        """The frames that carry ``pending``: packed arrays when packing is on."""
        if len(pending) == 1 or not self._pack:
            return pending
        frames: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        for payload in pending:
            if batch and size + len(payload) > _PACK_LIMIT:
                frames.append(self.codec.pack(batch) if len(batch) > 1 else batch[0])
                batch, size = [], 0
            batch.append(payload)
            size += len(payload) + 1
        frames.append(self.codec.pack(batch) if len(batch) > 1 else batch[0])
        return frames

    async def _write_loop(self) -> None:
        text = self.codec.text
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            self._pending_bytes = 0
            if pending:
                for frame in self._frames(pending):
                    if text:
                        await self._send({"type": "websocket.send", "text": frame.decode()})
                    else:
                        await self._send({"type": "websocket.send", "bytes": frame})
                    self.node.metrics.frames_written += 1
            if self._close is not None and not self._pending:
                code, reason = self._close
                # At most 123 bytes of UTF-8 (RFC 6455 section 5.5.1).
                reason = reason.encode()[:123].decode("utf-8", "ignore")
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
                return

    def close(self, code: int, reason: str = "") -> None:
        """Send what is queued, then close with ``code`` (idempotent)."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.session.closed()
        if self.id:
            # From now on it can receive nothing: stop addressing it.
            self.node.detach(self)
        self._close = (code, reason)
        self._wake.set()

    def _close_now(self, code: int, reason: str) -> None:
        """Close with ``code``, dropping anything still queued."""
        if self.closing:
            return
        self._pending.clear()
        self._pending_bytes = 0
        self.close(code, reason)


class AsgiGateway:
    """wsgate's WebSocket endpoint and control API as one ASGI application.

    Args:
        node: the node to serve (started and stopped by the gateway's lifespan).
        api_keys: keys of the control API (``/api/...``, ``/openapi.json``); without
            keys those paths are 404.
        path: the WebSocket path relative to the mount point (default
            ``config.server.path``).
    """

    def __init__(
        self, node: Node, *, api_keys: tuple[str, ...] | list[str] = (), path: str | None = None
    ) -> None:
        self.node = node
        self.path = node.config.server.path if path is None else path
        self.connections: set[AsgiConnection] = set()
        self._origins = OriginPolicy(node.config.server.allowed_origins)
        self._control: ASGIApp | None = control_app(node, api_keys) if api_keys else None
        self._sweeper: asyncio.Task[None] | None = None
        self._running = False
        self._drained = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the node and the connection sweep; idempotent."""
        if self._running:
            return
        await self.node.start()
        self._running = True
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def shutdown(self) -> None:
        """Close every client (4001), stop the node and the sweep; idempotent."""
        if not self._running:
            return
        self._running = False
        for conn in list(self.connections):
            if not conn.authenticated:
                conn.close(CloseCode.SHUTDOWN, "node shutting down")
        await self.node.stop()
        # Let the closed connections finish their close handshakes (bounded).
        if self.connections:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._drained.wait(), self.node.config.server.shutdown_timeout
                )
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """``startup`` on entry, ``shutdown`` on exit.

        Takes (and ignores) the application, so that it can be passed as
        Starlette's or FastAPI's ``lifespan=`` directly.
        """
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            path = _route_path(scope)
            if self._control is not None and (path == "/openapi.json" or path.startswith("/api/")):
                await self._control({**scope, "path": path}, receive, send)
            else:
                await _not_found(send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("wsgate startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        if _route_path(scope) != self.path:
            await _deny(scope, send, Denied(404, "not found"))
            return
        door = door_check(
            self.node,
            self._origins,
            headers,
            connections=len(self.connections),
            accepting=self._running,
        )
        if isinstance(door, Denied):
            log.info("rejected upgrade: %s", door.text)
            await _deny(scope, send, door)
            return
        query = dict(parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")))
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else None
        conn = AsgiConnection(self, door, send, headers=headers, query=query, remote_address=remote)
        offered = bool(headers.get("sec-websocket-protocol", "").strip())
        await send(
            {"type": "websocket.accept", "subprotocol": door.subprotocol if offered else None}
        )
        self.connections.add(conn)
        try:
            await conn.run(receive, token_from(headers, query))
        finally:
            self.connections.discard(conn)
            if not self.connections:
                self._drained.set()

    # -- housekeeping -----------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            try:
                self.sweep()
            except Exception:  # pragma: no cover - the sweep must never die
                log.exception("connection sweep failed")

    def sweep(self) -> None:
        """Authentication deadline and token expiry of every connection (once a second)."""
        now = time.monotonic()
        wall = time.time()
        for conn in list(self.connections):
            close_if_overdue(self.node, conn, now, wall)


async def _deny(scope: Scope, send: Send, denied: Denied) -> None:
    """Refuse an upgrade: an HTTP response where the server supports it, else a close."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = denied.text.encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": denied.status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": _DENIAL_CLOSE.get(denied.status, 1008)})


async def _not_found(send: Send) -> None:
    body = b"not found\n"
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
