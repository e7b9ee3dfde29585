"""Test clients for the gateway, and the one time unit of the suite.

:class:`Client` speaks the wsgate protocol through the independent
``websockets`` implementation (JSON or MessagePack); it decodes every frame and,
when the server packed several messages into one frame (an array), hands them
out one at a time. :class:`RawClient` does the RFC 6455 upgrade and framing by
hand, for peers that misbehave on purpose (never read, never answer a ping).

Every sleep and timeout is a multiple of :data:`UNIT`: one second, scaled by
the ``WSGATE_TEST_TIME_SCALE`` environment variable (raise it on slow machines).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

__all__ = [
    "JSON_PROTOCOL",
    "MSGPACK_PROTOCOL",
    "UNIT",
    "Client",
    "RawClient",
    "connect",
    "eventually",
    "scaled",
]

UNIT = float(os.environ.get("WSGATE_TEST_TIME_SCALE", "1.0"))
"""One second of test time; every sleep and timeout of the suite is a multiple of it."""

JSON_PROTOCOL = "wsgate.v1.json"
MSGPACK_PROTOCOL = "wsgate.v1.msgpack"
ABNORMAL_CLOSURE = 1006
"""What a client reports when the TCP connection ended without a close frame."""

Message = dict[str, Any]


def scaled(seconds: float) -> float:
    """``seconds`` of test time, in real seconds."""
    return seconds * UNIT


async def eventually(predicate: Callable[[], object], timeout: float = 2.0, what: str = "") -> None:
    """Wait (polling) until ``predicate()`` is true; fail after ``timeout`` units."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)


def decode_frame(frame: str | bytes, *, msgpack: bool) -> list[Message]:
    """The messages of one server frame (several when the server packed them)."""
    if msgpack:
        assert isinstance(frame, bytes), f"msgpack connections get binary frames, got {frame!r}"
        value = msgspec.msgpack.decode(frame)
    else:
        assert isinstance(frame, str), f"json connections get text frames, got {frame!r}"
        value = json.loads(frame)
    messages = value if isinstance(value, list) else [value]
    assert messages, f"empty packed frame: {frame!r}"
    for message in messages:
        assert isinstance(message, dict) and isinstance(message.get("op"), str), value
    return messages


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _check(message: Message, op: str, fields: dict[str, Any]) -> Message:
    assert message.get("op") == op, f"expected {op} {_short(fields)}, got {_short(message)}"
    for key, value in fields.items():
        assert message.get(key) == value, f"expected {key}={_short(value)}, got {_short(message)}"
    return message


class Client:
    """A wsgate client over a ``websockets`` connection.

    Attributes:
        ws: the underlying connection.
        welcome: the ``welcome`` message, once received by :func:`connect`.
        close_reason: the reason of the close frame seen by :meth:`closed`.
    """

    def __init__(self, ws: ClientConnection, *, msgpack: bool) -> None:
        self.ws = ws
        self.msgpack = msgpack
        self.welcome: Message | None = None
        self.close_reason: str | None = None
        self._buffer: deque[Message] = deque()

    @property
    def cid(self) -> str:
        """The connection id the server assigned (from ``welcome``)."""
        assert self.welcome is not None, "not welcomed yet"
        return str(self.welcome["cid"])

    @property
    def local_address(self) -> str:
        """``host:port`` of this end, as the server sees it."""
        host, port = self.ws.local_address[:2]
        return f"{host}:{port}"

    async def send(self, message: Message) -> None:
        """Encode and send one message."""
        await self.ws.send(msgspec.msgpack.encode(message) if self.msgpack else json.dumps(message))

    async def recv(self, timeout: float = 2.0) -> Message:
        """The next message (unpacking packed frames); fail after ``timeout`` units."""
        while not self._buffer:
            async with asyncio.timeout(scaled(timeout)):
                frame = await self.ws.recv()
            self._buffer.extend(decode_frame(frame, msgpack=self.msgpack))
        return self._buffer.popleft()

    async def expect(self, op: str, /, timeout: float = 2.0, **fields: Any) -> Message:
        """Receive the next message and check its ``op`` and the given fields."""
        return _check(await self.recv(timeout), op, fields)

    async def roundtrip(self, sent: Message, op: str = "ok", /, **fields: Any) -> Message:
        """Send a message and expect the answer with its ``id`` (``ok`` unless told)."""
        await self.send(sent)
        return await self.expect(op, id=sent["id"], **fields)

    async def no_message(self, within: float = 0.2) -> None:
        """Check that nothing arrives within ``within`` units."""
        assert not self._buffer, f"unexpected {list(self._buffer)}"
        try:
            async with asyncio.timeout(scaled(within)):
                frame = await self.ws.recv()  # cancelling recv() loses nothing
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {decode_frame(frame, msgpack=self.msgpack)}")

    async def closed(self, timeout: float = 3.0) -> int:
        """Read until the server closes; the close code it sent (1006 without a close frame).

        Messages that arrive before the close stay available to :meth:`recv`.
        """
        async with asyncio.timeout(scaled(timeout)):
            try:
                while True:
                    frame = await self.ws.recv()
                    self._buffer.extend(decode_frame(frame, msgpack=self.msgpack))
            except ConnectionClosed as exc:
                if exc.rcvd is None:
                    return ABNORMAL_CLOSURE
                self.close_reason = exc.rcvd.reason
                return exc.rcvd.code

    async def close(self) -> None:
        """Close from the client side (normal closure)."""
        await self.ws.close()


async def connect(
    url: str,
    token: str | None = None,
    *,
    via: str = "header",
    msgpack: bool = False,
    subprotocols: list[str] | None = None,
    origin: str | None = None,
    welcome: bool = True,
) -> Client:
    """Open a :class:`Client`.

    Args:
        url: the gateway's ``ws://`` URL.
        token: a token, sent as chosen by ``via``: ``"header"`` (Authorization:
            Bearer), ``"query"`` (``?token=``) or ``"message"`` (first ``auth`` message).
        msgpack: offer ``wsgate.v1.msgpack`` (else offer nothing: JSON is the default).
        subprotocols: offer exactly these instead.
        origin: the Origin header to send.
        welcome: wait for (and check) the ``welcome`` message.
    """
    headers: dict[str, str] = {}
    if token is not None and via == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None and via == "query":
        url = f"{url}?{urlencode({'token': token})}"
    offered = subprotocols if subprotocols is not None else [MSGPACK_PROTOCOL] if msgpack else None
    ws = await ws_connect(
        url,
        additional_headers=headers,
        subprotocols=offered,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        compression=None,
        proxy=None,
        ping_interval=None,  # the server drives keepalive; the client only answers
        open_timeout=scaled(5),
        close_timeout=scaled(2),
        max_size=None,
    )
    client = Client(ws, msgpack=msgpack)
    try:
        if offered:
            assert ws.subprotocol in offered, ws.subprotocol
        if token is not None and via == "message":
            await client.send({"op": "auth", "token": token})
        if welcome:
            client.welcome = await client.expect("welcome")
    except BaseException:
        await ws.close()
        raise
    return client


class RawClient:
    """A WebSocket client written by hand (RFC 6455), JSON encoding only.

    It reads only when told to and never answers a ping unless ``answer_pings``.

    Attributes:
        pings: pings received so far.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answer_pings = False
        self.pings = 0
        self._buffer: deque[Message] = deque()

    @classmethod
    async def connect(
        cls, url: str, token: str | None = None, *, rcvbuf: int | None = None
    ) -> RawClient:
        """Connect and upgrade; ``rcvbuf`` shrinks the socket's receive buffer."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {parts.path or '/'} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            async with asyncio.timeout(scaled(5)):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
        except BaseException:
            await client.close()
            raise
        return client

    def send(self, message: Message) -> None:
        """Send one JSON message as a masked text frame."""
        self.send_frame(0x1, json.dumps(message).encode())

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame with FIN set."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    async def read_frame(self) -> tuple[int, bytes]:
        """The next frame's opcode and payload (server frames are never masked)."""
        first, second = await self.reader.readexactly(2)
        assert first & 0x80, "the server does not fragment"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    async def _next_frame(self) -> tuple[int, bytes]:
        """The next non-ping frame; pings are counted (and answered if asked to)."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode != 0x9:
                return opcode, payload
            self.pings += 1
            if self.answer_pings:
                self.send_frame(0xA, payload)

    async def recv(self, timeout: float = 2.0) -> Message:
        """The next message; fail on a close frame."""
        async with asyncio.timeout(scaled(timeout)):
            while not self._buffer:
                opcode, payload = await self._next_frame()
                assert opcode == 0x1, f"expected a text frame, got opcode {opcode}: {payload!r}"
                self._buffer.extend(decode_frame(payload.decode(), msgpack=False))
        return self._buffer.popleft()

    async def expect(self, op: str, /, timeout: float = 2.0, **fields: Any) -> Message:
        """Receive the next message and check its ``op`` and the given fields."""
        return _check(await self.recv(timeout), op, fields)

    async def closed(self, timeout: float = 3.0) -> int:
        """Read until a close frame (its code) or the end of the stream (1006)."""
        async with asyncio.timeout(scaled(timeout)):
            try:
                while True:
                    opcode, payload = await self._next_frame()
                    if opcode == 0x8:
                        return int(struct.unpack("!H", payload[:2])[0])
            except (asyncio.IncompleteReadError, ConnectionError):
                return ABNORMAL_CLOSURE

    async def close(self) -> None:
        """Drop the TCP connection."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
