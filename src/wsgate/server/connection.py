"""One client connection on the picows transport: bytes in, bytes out.

Inbound: picows hands us frames; we reassemble fragmented messages (bounded by
``max_message_size``), hand whole messages to the sans-I/O session for checks
and decoding, and valid messages to the node.

Outbound: ``deliver`` appends an already-encoded message to a per-connection
list and marks the connection dirty; the server's :class:`Flusher` runs once
per event-loop tick and writes each dirty connection's queue with ONE write:
a single frame, or several messages packed into one frame (an array). So a
fan-out burst costs one system call per connection, not one per message, and
``deliver`` never blocks. Bytes waiting while the socket is paused count
against ``max_queue_bytes``; beyond it the connection is closed as a slow
consumer (4000).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any, cast

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from wsgate.auth import Identity
from wsgate.errors import AuthError
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
from wsgate.server.common import count_close, reauthenticate, verify

if TYPE_CHECKING:
    from wsgate.server.listener import Server

__all__ = ["Connection", "Flusher"]

log = logging.getLogger("wsgate.server")

_PACK_LIMIT = 65_536
"""Largest packed frame: messages are packed while the frame stays under this size."""
_MAX_EARLY = 32
"""Messages buffered while a token from the upgrade request is being verified."""
_NO_IDENTITY = Identity(user=None)


def _frame_header(first: int, size: int) -> bytes:
    """RFC 6455 section 5.2 header of an unmasked server frame."""
    if size < 126:
        return bytes((first, size))
    if size < 65_536:
        return struct.pack("!BBH", first, 126, size)
    return struct.pack("!BBQ", first, 127, size)


class Flusher:
    """Writes dirty connections' queues: direct traffic at the end of this tick,
    fan-out at most once per ``interval`` while flushes come close together.

    A fan-out message arriving after a quiet spell goes out at the end of its
    tick like any other; under a steady stream of publications (more than one
    per ``interval``) each connection is written at most once per ``interval``,
    so one system call carries several messages instead of one each. Direct
    traffic (sends, requests, replies, acks) never waits: it flushes everything
    queued on every dirty connection at the end of its tick.
    """

    __slots__ = ("_dirty", "_interval", "_last", "_loop", "_scheduled", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0) -> None:
        self._loop = loop
        self._interval = interval
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._last = -interval

    def mark(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this tick."""
        self._dirty.append(conn)
        self.soon()

    def soon(self) -> None:
        """Flush every dirty connection at the end of this tick."""
        if not self._scheduled:
            self._scheduled = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._loop.call_soon(self.flush)

    def mark_fanout(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this tick, or ``interval`` after the last flush."""
        self._dirty.append(conn)
        if self._scheduled or self._timer is not None:
            return
        wait = self._last + self._interval - self._loop.time()
        if wait <= 0:
            self._scheduled = True
            self._loop.call_soon(self.flush)
        else:
            self._timer = self._loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Write out every dirty connection (normally called by the loop)."""
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last = self._loop.time()
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:
                # One broken transport must not leave the others unflushed.
                log.exception("write to %r failed; dropping the connection", conn)
                conn.abort()


class Connection(WSListener):
    """A client connection; implements :class:`wsgate.hub.ClientConnection`."""

    # Slots: no per-connection __dict__ (about 1 KiB less per idle connection).
    __slots__ = (
        "_dirty",
        "_early",
        "_first_byte",
        "_fragments",
        "_headers",
        "_max_queue",
        "_msg_type",
        "_pack",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_query",
        "_raw",
        "_token",
        "abort_at",
        "accepted_at",
        "close_code",
        "closing",
        "codec",
        "connected_at",
        "id",
        "identity",
        "inflight_calls",
        "last_recv",
        "node",
        "pending_requests",
        "ping_sent_at",
        "remote_address",
        "server",
        "session",
        "subscriptions",
        "transport",
    )

    def __init__(
        self,
        server: Server,
        codec: Codec,
        token: str | None,
        headers: dict[str, str],
        query: dict[str, str],
    ) -> None:
        super().__init__()
        limits = server.node.config.limits
        self.server = server
        self.node = server.node
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
        self.remote_address: str | None = None
        self.transport: WSTransport | None = None
        self._raw: Any = None
        self._token = token
        self._headers = headers
        self._query = query
        self._first_byte = 0x81 if codec.text else 0x82
        self._msg_type = WSMsgType.TEXT if codec.text else WSMsgType.BINARY
        self._max_queue = limits.max_queue_bytes
        self._pack = server.node.config.server.pack_messages
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._dirty = False
        self._paused = False
        self._fragments: bytearray | None = None
        self._early: list[bytes] | None = None
        self.closing = False
        self.close_code: int | None = None
        now = time.monotonic()
        self.accepted_at = now
        self.last_recv = now
        self.ping_sent_at = 0.0
        self.abort_at = 0.0

    def __repr__(self) -> str:
        return f"<Connection {self.id or '(unauthenticated)'} {self.remote_address}>"

    @property
    def user(self) -> str | None:
        return self.identity.user

    @property
    def authenticated(self) -> bool:
        return self.session.state is State.OPEN

    # -- picows callbacks -------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._raw = transport.underlying_transport
        peer = self._raw.get_extra_info("peername")
        if peer:
            self.remote_address = f"{peer[0]}:{peer[1]}"
        self.server.connections.add(self)
        # Authenticate at once with what the upgrade carried (a token, or headers such
        # as cookies for custom authenticators). Without a token a failure is not final:
        # the client may still send an `auth` message within the handshake timeout.
        self._early = []
        self.server.spawn(self._authenticate(self._token, final=self._token is not None))
        self._token = None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.server.forget(self)
        handshake = transport.close_handshake
        if not self.closing and handshake is not None and handshake.sent is not None:
            # picows closed it itself: an oversized or invalid frame.
            code = int(cast(Any, handshake.sent.code))
            if code == CloseCode.MESSAGE_TOO_BIG:
                self.node.metrics.oversized_messages += 1
            else:
                self.node.metrics.protocol_errors += 1
            log.info("closed %r with %d: %s", self, code, handshake.sent.reason)
        self.closing = True
        self.session.closed()
        self._pending.clear()
        if self.authenticated or self.id:
            self.node.detach(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.last_recv = time.monotonic()
        self.ping_sent_at = 0.0
        msg_type = frame.msg_type
        if msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if self._fragments is not None:
                self._close_now(CloseCode.FRAMING_ERROR, "new message inside a fragmented one")
            elif frame.fin:
                self._on_message(frame.get_payload_as_bytes())
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                self._check_fragment_size()
        elif msg_type == WSMsgType.CONTINUATION:
            if self._fragments is None:
                self._close_now(CloseCode.FRAMING_ERROR, "continuation without a message")
                return
            self._fragments += frame.get_payload_as_memoryview()
            if self._check_fragment_size() and frame.fin:
                payload = bytes(self._fragments)
                self._fragments = None
                self._on_message(payload)
        elif msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:
                self.closing = True
                # Echo the peer's code (RFC 6455 5.5.1); a close without a code gets 1000.
                code = frame.get_close_code()
                transport.send_close(code if int(cast(Any, code)) else WSCloseCode.OK, b"")
            transport.disconnect()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._pending and not self._dirty:
            self._dirty = True
            self.server.flusher.mark(self)

    # -- inbound ----------------------------------------------------------------------

    def _check_fragment_size(self) -> bool:
        assert self._fragments is not None
        outcome = self.session.check_size(len(self._fragments))
        if outcome is not None:
            self._fragments = None
            self._apply(outcome)
            return False
        return True

    def _on_message(self, payload: bytes) -> None:
        if self._early is not None:  # a token is being verified: hold messages until then
            if len(self._early) >= _MAX_EARLY:
                self._close_now(CloseCode.PROTOCOL_ERROR, "too many messages before welcome")
            else:
                self._early.append(payload)
            return
        outcome = self.session.receive(payload, time.monotonic())
        if outcome is not None:
            self._apply(outcome)

    def _apply(self, outcome: Received | Reject | Close) -> None:
        if isinstance(outcome, Received):
            message = outcome.message
            if isinstance(message, Auth) and self.authenticated:
                self.server.spawn(self._reauthenticate(message))
            elif isinstance(message, Auth):
                self._early = []
                self.server.spawn(self._authenticate(message.token, final=True))
            else:
                self.node.handle(self, message)
        elif isinstance(outcome, Reject):
            self.node.metrics.bad_requests += 1
            self.deliver(self.codec.encode(outcome.error))
        else:
            count_close(self.node.metrics, outcome.code)
            log.info("closing %r with %d: %s", self, outcome.code, outcome.reason)
            self._close_now(outcome.code, outcome.reason)

    async def _verify(self, token: str | None) -> Identity:
        """Authenticate ``token`` (with this upgrade's headers); raises AuthError."""
        return await verify(self.node, token, self._headers, self._query, self.remote_address)

    async def _authenticate(self, token: str | None, *, final: bool) -> None:
        try:
            identity = await self._verify(token)
        except AuthError as exc:
            if not final:
                early, self._early = self._early or [], None
                for payload in early:
                    self._on_message(payload)
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
        if self.closing:
            return
        early, self._early = self._early or [], None
        for payload in early:
            if self.closing:
                break
            self._on_message(payload)

    async def _reauthenticate(self, message: Auth) -> None:
        await reauthenticate(self.node, self, message, self._headers, self._query)

    # -- outbound ---------------------------------------------------------------------

    def deliver(self, payload: bytes) -> None:
        """Queue one encoded message for the next flush (never blocks)."""
        if self.closing:
            self.node.metrics.dropped_closed += 1
            return
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        if self._pending_bytes > self._max_queue:
            self._slow_consumer()
        elif not self._dirty:
            self._dirty = True
            self.server.flusher.mark(self)
        else:
            self.server.flusher.soon()  # queued fan-out may be waiting: no longer

    def deliver_fanout(self, payload: bytes) -> None:
        """Queue one message of a fan-out; the flusher may coalesce it (never blocks)."""
        # The queueing lines repeat deliver()'s on purpose: this runs once per
        # delivery of every publication, where a shared helper's call would show.
        if self.closing:
            self.node.metrics.dropped_closed += 1
            return
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        if self._pending_bytes > self._max_queue:
            self._slow_consumer()
        elif not self._dirty:
            self._dirty = True
            self.server.flusher.mark_fanout(self)

    def flush(self) -> None:
        """Write the queue with one call (called by the flusher)."""
        self._dirty = False
        pending = self._pending
        if self._paused or not pending:
            return
        if self.closing or self.transport is None or self.transport.is_close_frame_sent:
            self._pending.clear()  # nothing may follow a close frame (RFC 6455 5.5.1)
            self._pending_bytes = 0
            return
        self._pending = []
        self._pending_bytes = 0
        raw = self._raw
        first = self._first_byte
        if len(pending) == 1:
            # picows frames it in C and calls send(2) directly while nothing is
            # buffered: the cheapest write for the common one-message tick.
            self.transport.send(self._msg_type, pending[0])
            frames = 1
        elif not self._pack:
            raw.writelines([_frame_header(first, len(p)) + p for p in pending])
            frames = len(pending)
        else:
            chunks: list[bytes] = []
            batch: list[bytes] = []
            size = 0
            for payload in pending:
                if batch and size + len(payload) > _PACK_LIMIT:
                    packed = self.codec.pack(batch) if len(batch) > 1 else batch[0]
                    chunks.append(_frame_header(first, len(packed)))
                    chunks.append(packed)
                    batch, size = [], 0
                batch.append(payload)
                size += len(payload) + 1
            packed = self.codec.pack(batch) if len(batch) > 1 else batch[0]
            chunks.append(_frame_header(first, len(packed)))
            chunks.append(packed)
            raw.writelines(chunks)
            frames = len(chunks) // 2
        self.node.metrics.frames_written += frames
        if raw.get_write_buffer_size() > self._max_queue:
            self._slow_consumer()

    def _slow_consumer(self) -> None:
        self.node.metrics.slow_consumers += 1
        log.warning(
            "closing %r: slow consumer (outbound queue over %d bytes)", self, self._max_queue
        )
        self._pending.clear()
        self._pending_bytes = 0
        self._close_now(CloseCode.SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str = "") -> None:
        """Flush what is queued, then close with ``code`` (idempotent)."""
        if self.closing:
            return
        if self._pending and not self._paused:
            self.flush()
        self._close_now(code, reason)

    def _close_now(self, code: int, reason: str) -> None:
        """Send the close frame now, dropping anything still queued."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.session.closed()
        self._pending.clear()
        self._pending_bytes = 0
        if self.id:
            # From now on it can receive nothing: stop addressing it (send, presence,
            # requests) without waiting for the peer's close frame or the TCP close.
            self.node.detach(self)
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        # At most 123 bytes of UTF-8 (RFC 6455 section 5.5.1), cut at a character boundary.
        reason_bytes = reason.encode()[:123].decode("utf-8", "ignore").encode()
        transport.send_close(WSCloseCode(code), reason_bytes)
        # The peer should answer with its close frame; abort if it does not.
        # A slow or silent peer will not read it: give it one second, not the full timeout.
        grace = 1.0 if code in (CloseCode.SLOW_CONSUMER, CloseCode.KEEPALIVE_TIMEOUT) else None
        self.abort_at = time.monotonic() + (grace or self.server.close_timeout)

    def send_ping(self) -> None:
        """A keepalive ping (called by the server's sweep)."""
        if self.transport is not None and not self.closing:
            self.ping_sent_at = time.monotonic()
            self.transport.send_ping(b"")

    def abort(self) -> None:
        """Drop the TCP connection without waiting for the close handshake."""
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.disconnect(graceful=False)
