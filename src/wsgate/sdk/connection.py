"""One WebSocket connection of the client SDK, from ``welcome`` to its close.

A :class:`Connection` numbers the client's messages (ids start at 1 on every
connection, docs/protocol.md section 3.4), matches each ``ok``/``error`` to the
message it answers by id, and fails the answers still awaited when it ends.

The reconnect policy of section 9.2 is here too: :func:`closed_by` is the one
place that turns how a connection ended (a close frame, a refused upgrade, a
network error) into a close code and a verdict on reconnecting, and
:func:`backoff_delay` says how long to wait. The reconnect loop that applies
them lives in :mod:`wsgate.sdk.client`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from typing import Final

import msgspec
from websockets import exceptions as ws_errors
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from wsgate.errors import ConnectionClosed, ConnectionLost, ProtocolError, RemoteError
from wsgate.protocol.codec import Codec
from wsgate.protocol.codes import is_reconnectable
from wsgate.protocol.messages import ClientMessage, Error, Ok, ServerMessage, Welcome

__all__ = [
    "ABNORMAL_CLOSURE",
    "STABLE_AFTER",
    "Connection",
    "backoff_delay",
    "closed_by",
    "decode_frame",
    "open_connection",
]

log = logging.getLogger("wsgate.client")

ABNORMAL_CLOSURE: Final = 1006
"""What a client reports when the TCP connection ended without a close frame (RFC 6455)."""
STABLE_AFTER: Final = 30.0
"""Seconds a connection must stay open for the backoff to start again from 0 (9.2)."""


class Connection:
    """An open, welcomed connection.

    Attributes:
        ws: the ``websockets`` connection.
        codec: the negotiated encoding.
        welcome: the server's ``welcome``.
        closed: how it ended, once it has.
    """

    def __init__(self, ws: ClientConnection, codec: Codec, welcome: Welcome) -> None:
        self.ws = ws
        self.codec = codec
        self.welcome = welcome
        self.closed: ConnectionClosed | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Ok]] = {}

    def lost(self) -> ConnectionLost:
        """The error of a message whose answer this connection took with it."""
        error = ConnectionLost(self.welcome.cid)
        error.__cause__ = self.closed
        return error

    async def send(self, message: ClientMessage) -> None:
        """Encode and send one message.

        Raises:
            TypeError: the payload cannot be encoded.
            ConnectionLost: the connection is gone.
        """
        frame = self.codec.encode(message)
        if self.closed is not None:
            raise self.lost()
        try:
            await self.ws.send(frame, text=self.codec.text)
        except ws_errors.ConnectionClosed as exc:
            raise self.lost() from exc

    async def request(self, build: Callable[[int], ClientMessage]) -> Ok:
        """Send ``build(id)`` for a fresh id and await the answer with that id.

        Raises:
            RemoteError: the answer was an ``error``.
            ConnectionLost: the connection ended first.
        """
        request_id = next(self._ids)
        future: asyncio.Future[Ok] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send(build(request_id))
            return await future
        finally:
            del self._pending[request_id]

    async def receive(self) -> list[ServerMessage]:
        """The messages of the next frame.

        Raises:
            websockets.exceptions.ConnectionClosed: the connection ended.
        """
        return decode_frame(self.codec, await self.ws.recv(decode=False))

    def answer(self, message: Ok | Error) -> None:
        """Hand an ``ok`` or ``error`` to the message it answers (late ones are dropped)."""
        future = self._pending.get(message.id) if message.id is not None else None
        if future is None or future.done():
            if isinstance(message, Error):
                log.warning("error from the gateway: %s %s", message.code, message.message)
            return
        if isinstance(message, Ok):
            future.set_result(message)
        else:
            future.set_exception(RemoteError(message.code, message.message, message.data))

    def end(self, closed: ConnectionClosed) -> None:
        """Record how the connection ended; every answer still awaited fails."""
        self.closed = closed
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self.lost())


async def open_connection(
    url: str,
    codec: Codec,
    *,
    token: str | None,
    timeout: float,
    ping_interval: float | None,
) -> tuple[Connection, list[ServerMessage]]:
    """Connect, authenticate with ``token`` and read ``welcome``.

    Returns:
        The connection, and the messages packed behind ``welcome`` in its frame.

    Raises:
        Whatever :func:`closed_by` classifies: websockets' errors, OSError, TimeoutError.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await ws_connect(
        url,
        additional_headers=headers,
        subprotocols=[Subprotocol(codec.subprotocol)],
        compression=None,  # the gateway negotiates no extension (protocol.md 2.1)
        open_timeout=timeout,
        close_timeout=timeout,
        ping_interval=ping_interval,
        ping_timeout=timeout if ping_interval else None,
        max_size=None,  # the gateway is trusted; its messages may exceed its inbound limit
    )
    try:
        async with asyncio.timeout(timeout):
            messages = decode_frame(codec, await ws.recv(decode=False))
        if not messages or not isinstance(messages[0], Welcome):
            raise ws_errors.InvalidMessage("the first message is not welcome")
    except BaseException:
        await ws.close()
        raise
    return Connection(ws, codec, messages[0]), messages[1:]


def decode_frame(codec: Codec, frame: str | bytes) -> list[ServerMessage]:
    """The messages of one server frame, without those that do not decode.

    Unknown ops are skipped, also inside a packed frame (protocol.md section 10).
    """
    payload = frame.encode() if isinstance(frame, str) else frame
    try:
        return codec.decode_server(payload)
    except ProtocolError as exc:
        error: Exception = exc
    try:
        raw = (msgspec.json if codec.text else msgspec.msgpack).decode(payload)
    except msgspec.DecodeError:
        raw = None
    messages: list[ServerMessage] = []
    for item in raw if isinstance(raw, list) else [raw]:
        try:
            messages += codec.decode_server(codec.encode_value(item))
        except (ProtocolError, TypeError) as exc:
            error = exc
    log.warning("ignoring a message from the gateway: %s", error)
    return messages


def closed_by(exc: BaseException) -> tuple[ConnectionClosed, bool]:
    """How a connection or an attempt ended, and whether the close code allows a retry.

    Follows docs/protocol.md section 9: reconnect after the reconnect class of
    close codes, a connection lost without a close frame (1006), a failed
    attempt and HTTP 5xx; never after terminal or application codes, nor after
    other HTTP statuses (400, 403: configuration problems).
    """
    if isinstance(exc, ws_errors.ConnectionClosed):
        if exc.rcvd is None:
            closed = ConnectionClosed(ABNORMAL_CLOSURE, "connection lost")
        else:
            closed = ConnectionClosed(exc.rcvd.code, exc.rcvd.reason)
        retry = is_reconnectable(closed.code)
    elif isinstance(exc, ws_errors.InvalidStatus):
        status = exc.response.status_code
        closed = ConnectionClosed(ABNORMAL_CLOSURE, f"upgrade refused with HTTP {status}")
        retry = status >= 500
    elif isinstance(exc, OSError | TimeoutError | EOFError | ws_errors.InvalidMessage):
        closed = ConnectionClosed(ABNORMAL_CLOSURE, f"cannot connect: {exc or type(exc).__name__}")
        retry = True
    else:  # a bad URL, a handshake the server got wrong: trying again changes nothing
        closed = ConnectionClosed(ABNORMAL_CLOSURE, f"cannot connect: {exc!r}")
        retry = False
    closed.__cause__ = exc
    return closed, retry


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The delay before reconnect ``attempt`` (counted from 0), in seconds.

    Exponential backoff with full jitter, ``uniform(0, min(cap, base * 2 ** attempt))``
    (protocol.md 9.2), so that clients dropped together do not return together.
    """
    ceiling = cap if attempt >= 64 else min(cap, base * 2**attempt)
    return (rng or random).uniform(0, ceiling)
