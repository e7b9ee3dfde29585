"""The WebSocket listener: upgrade checks, connection tracking, keepalive, shutdown.

At the door (synchronously, before the 101 response): the path, the origin
(403), the subprotocol (400), the connection limit (503). Authentication runs
right after the upgrade, with the token from the ``Authorization`` header, the
``token`` query parameter or the first message; until it succeeds the
connection can do nothing else, and after ``handshake_timeout`` it is closed
(4005).

One sweep per second checks every connection: authentication deadline, token
expiry (4003), keepalive (a ping after ``ping_interval`` idle seconds, 4002
when nothing arrives within ``pong_timeout``) and connections that did not
finish their close handshake in time. One timer for the whole node, not one
per connection.

``GET /health`` answers ``ok`` and ``GET /metrics`` the Prometheus text of the
node's counters; neither reveals identities or payloads. ``GET /client.js`` serves
the browser client and ``GET /examples/chat/`` the chat example, static files of
the installed package named by a fixed allow-list (never by the request path).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qsl

from picows import (
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from wsgate.auth import OriginPolicy
from wsgate.node import Node
from wsgate.protocol.codes import CloseCode
from wsgate.server.common import (
    Denied,
    close_if_overdue,
    door_check,
    offered_subprotocols,
    token_from,
)
from wsgate.server.connection import Connection, Flusher

__all__ = ["Server"]

LISTEN_BACKLOG = 4096
"""Pending TCP connections the kernel queues for us (capped by net.core.somaxconn)."""

log = logging.getLogger("wsgate.server")

_SWEEP_INTERVAL = 1.0

_JS: Final = "text/javascript; charset=utf-8"  # ES modules need a JavaScript MIME type
_CHAT_PAGE: Final = (
    "chat.html",
    {
        "Content-Type": "text/html; charset=utf-8",
        # The page carries its token in the URL: keep it out of Referer headers.
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    },
)
_STATIC: Final[dict[str, tuple[str, dict[str, str]]]] = {
    "/client.js": ("client.js", {"Content-Type": _JS}),
    "/examples/chat": _CHAT_PAGE,
    "/examples/chat/": _CHAT_PAGE,
    "/examples/chat/index.html": _CHAT_PAGE,
    "/examples/chat/chat.js": ("chat.js", {"Content-Type": _JS}),
}
"""Plain GET path -> (file in ``wsgate/static``, headers): the only files ever served."""


@functools.cache
def _static_file(name: str) -> bytes | None:
    """The bytes of a packaged static file, read once; None when it is not installed."""
    try:
        return (resources.files("wsgate") / "static" / name).read_bytes()
    except OSError:
        log.error("static file %s is missing from the wsgate package", name)
        return None


def _error(status: int, text: str) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(
        status, text.encode(), extra_headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    return WSUpgradeResponseWithListener(response, None)


class Server:
    """Serves a node's WebSocket endpoint.

    Args:
        node: the node to serve.
        host: overrides ``config.server.host``.
        port: overrides ``config.server.port`` (0 picks a free port).
    """

    def __init__(self, node: Node, *, host: str | None = None, port: int | None = None) -> None:
        cfg = node.config.server
        self.node = node
        self.host = cfg.host if host is None else host
        self.port = cfg.port if port is None else port
        self.path = cfg.path
        self.close_timeout = cfg.shutdown_timeout
        self.connections: set[Connection] = set()
        self._origins = OriginPolicy(cfg.allowed_origins)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: Flusher | None = None
        self._stopped = asyncio.Event()
        self._drained = asyncio.Event()

    @property
    def flusher(self) -> Flusher:
        assert self._flusher is not None, "server not started"
        return self._flusher

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        """Start the node and listen; on return, ``port`` is the bound port."""
        loop = asyncio.get_running_loop()
        self._flusher = Flusher(loop, self.node.config.server.flush_interval)
        await self.node.start()
        cfg = self.node.config
        self._server = await ws_create_server(
            self._route,
            self.host,
            self.port,
            websocket_handshake_timeout=cfg.server.handshake_timeout,
            enable_auto_ping=False,  # our sweep does keepalive for all connections at once
            # Pings are answered by Connection so that they count as activity.
            enable_auto_pong=False,
            max_frame_size=cfg.limits.max_message_size,
            read_buffer_init_size=2048,
            # The event loop's own transports: same throughput as aiofastnet's, and
            # 9.2 instead of 14.5 KiB per idle connection (bench/candidates/RESULTS.md).
            use_aiofastnet=False,
            logger_name="wsgate.picows",
            disconnect_on_exception=True,
            # asyncio's default backlog of 100 drops SYNs when many clients connect
            # at once (a reconnect storm after a restart); the kernel caps it at
            # net.core.somaxconn.
            backlog=LISTEN_BACKLOG,
        )
        sockname = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        self._sweeper = loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop accepting, close every client with 4001, fail pending requests, stop the node."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if not conn.authenticated:
                conn.close(CloseCode.SHUTDOWN, "node shutting down")
        await self.node.stop()
        if self.connections:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.close_timeout)
        for conn in list(self.connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()

    def forget(self, conn: Connection) -> None:
        """A connection's socket is gone (called by the connection)."""
        self.connections.discard(conn)
        if not self.connections:
            self._drained.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a connection's background work, keeping a strong reference."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())

    # -- the door ---------------------------------------------------------------------

    def _route(self, request: WSUpgradeRequest) -> Any:
        """Decide what to do with an HTTP request (runs before any upgrade)."""
        target = request.path.decode("latin-1")
        path, _, query_string = target.partition("?")
        if path != self.path:
            return self._http(request, path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        door = door_check(
            self.node,
            self._origins,
            headers,
            connections=len(self.connections),
            accepting=self._server is not None,
        )
        if isinstance(door, Denied):
            if door.status == 403:
                log.info("rejected upgrade: origin %r not allowed", headers.get("origin"))
            elif door.status == 503 and not self.node.closing and self._server is not None:
                log.warning("rejected upgrade: at max_connections")
            return _error(door.status, door.text)
        codec = door
        offered = offered_subprotocols(headers)
        query = dict(parse_qsl(query_string))
        token = token_from(headers, query)
        conn = Connection(self, codec, token, headers, query)
        extra = {"Sec-WebSocket-Protocol": codec.subprotocol} if offered else None
        response = WSUpgradeResponse.create_101_response(extra_headers=extra)
        return WSUpgradeResponseWithListener(response, conn)

    def _http(self, request: WSUpgradeRequest, path: str) -> Any:
        """Plain HTTP GET endpoints served beside the WebSocket path."""
        if path == "/health":
            status = 503 if self.node.closing else 200
            body = b"shutting down\n" if status == 503 else b"ok\n"
            if status == 503:
                return _error(503, body.decode())
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(body), None)
        if path == "/metrics":
            body = self.node.metrics.render(f'{{node="{self.node.id}"}}').encode()
            response = WSUpgradeResponse.create_ok_response(
                body, extra_headers={"Content-Type": "text/plain; version=0.0.4"}
            )
            return WSUpgradeResponseWithListener(response, None)
        static = _STATIC.get(path)
        if static is not None:
            name, headers = static
            content = _static_file(name)
            if content is None:
                return None  # 404
            headers = {**headers, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
            response = WSUpgradeResponse.create_ok_response(content, extra_headers=headers)
            return WSUpgradeResponseWithListener(response, None)
        return None  # 404

    # -- housekeeping -----------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            try:
                self.sweep()
            except Exception:  # pragma: no cover - the sweep must never die
                log.exception("connection sweep failed")

    def sweep(self) -> None:
        """Enforce deadlines on every connection (called once per second)."""
        cfg = self.node.config
        now = time.monotonic()
        wall = time.time()
        metrics = self.node.metrics
        interval = cfg.keepalive.ping_interval
        pong_timeout = cfg.keepalive.pong_timeout
        for conn in list(self.connections):
            if conn.closing and conn.abort_at and now >= conn.abort_at:
                conn.abort()
            if close_if_overdue(self.node, conn, now, wall):
                continue
            if conn.ping_sent_at:
                if now - conn.ping_sent_at > pong_timeout:
                    metrics.keepalive_timeouts += 1
                    log.info("closing %r: no pong within %g s", conn, pong_timeout)
                    conn.close(CloseCode.KEEPALIVE_TIMEOUT, "keepalive timeout")
            elif now - conn.last_recv > interval:
                conn.send_ping()
