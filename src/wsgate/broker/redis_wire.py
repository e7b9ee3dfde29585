"""Lean RESP connections for the Redis broker's hot path.

redis-py serves everything else (presence, calls, admin commands), but on the
two paths every message takes it costs more than the rest of the gateway:

* a ``PUBLISH`` awaited through its connection pool takes one pooled
  connection and one round trip per call, so 100 concurrent publishers hold
  100 connections and each pays a whole round trip;
* ``PubSub.get_message`` is one await, one timeout context and one dict per
  message read.

:class:`CommandConnection` pipelines: commands issued in one event-loop tick
leave in one write, and their replies are matched to their callers in order
(Redis answers the commands of one connection in the order it read them,
``https://redis.io/docs/latest/develop/use/pipelining/``).
:class:`SubscriberConnection` hands every parsed push message of the stream to
one callback as soon as it is read, in stream order. Both parse with hiredis,
the C RESP parser redis-py itself uses when installed.

Failures surface as redis-py's exceptions (``ConnectionError``,
``TimeoutError``, ``ResponseError``), so callers map them to
:class:`~wsgate.errors.BrokerError` in one place for both clients. Nothing is
retried here: a ``PUBLISH`` whose reply was lost may have been delivered, and
sending it again could deliver twice.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["CommandConnection", "RedisTarget", "SubscriberConnection", "pack_command"]

# redis-py leaves parse_url unannotated; a typed reference keeps mypy strict.
_parse_url: Final[Callable[[str], dict[str, Any]]] = parse_url


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where and how to connect, read from a Redis URL (never logged whole)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls: bool = False
    verify: bool = True
    connect_timeout: float = 2.0

    @classmethod
    def from_url(cls, url: str, connect_timeout: float) -> RedisTarget:
        """Parse ``redis://``, ``rediss://`` and ``unix://`` URLs as redis-py does."""
        options = _parse_url(url)
        connection_class = options.get("connection_class")
        timeout = options.get("socket_connect_timeout")
        return cls(
            host=str(options.get("host") or "localhost"),
            port=int(options.get("port") or 6379),
            path=options.get("path") if connection_class is UnixDomainSocketConnection else None,
            username=options.get("username"),
            password=options.get("password"),
            tls=connection_class is SSLConnection,
            verify=str(options.get("ssl_cert_reqs", "required")).lower() != "none",
            connect_timeout=float(timeout) if timeout is not None else connect_timeout,
        )


def pack_command(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _publish_command(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(data),
        data,
    )


class _Resp(asyncio.Protocol):
    """One RESP connection: writes coalesced per tick, replies parsed by hiredis."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._push: Callable[[Any], None] | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.last_traffic = time.monotonic()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_traffic = time.monotonic()
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                push = self._push
                if push is not None:
                    push(reply)
                elif self._waiting:
                    future = self._waiting.popleft()
                    if not future.done():
                        if isinstance(reply, ResponseError):
                            future.set_exception(reply)
                        else:
                            future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(RedisConnectionError(f"protocol error from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    # -- commands -----------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._transport is not None and not self.lost.done()

    def write(self, command: bytes) -> None:
        """Queue a packed command; everything queued in one tick leaves in one write."""
        if self.lost.done():
            raise self.lost.exception() or RedisConnectionError("connection closed")
        self._outgoing.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def command(self, command: bytes) -> asyncio.Future[Any]:
        """Send a packed command; its future resolves with the reply, in order."""
        self.write(command)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.append(future)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and outgoing and not self.lost.done():
            self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(RedisConnectionError("connection closed"))

    def _fail(self, exc: Exception) -> None:
        if not self.lost.done():
            self.lost.set_exception(exc)
            self.lost.exception()  # retrieved: nobody has to await it
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


async def _open(target: RedisTarget, client_name: str) -> _Resp:
    """Connect, authenticate and name the connection (one round trip)."""
    loop = asyncio.get_running_loop()
    context: ssl.SSLContext | None = None
    if target.tls:
        context = ssl.create_default_context()
        if not target.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    protocol: _Resp | None = None
    try:
        async with asyncio.timeout(target.connect_timeout):
            if target.path is not None:
                _, protocol = await loop.create_unix_connection(lambda: _Resp(loop), target.path)
            else:
                _, protocol = await loop.create_connection(
                    lambda: _Resp(loop), target.host, target.port, ssl=context
                )
            replies = []
            if target.password is not None:
                auth = (target.username, target.password) if target.username else (target.password,)
                replies.append(protocol.command(pack_command("AUTH", *auth)))
            replies.append(protocol.command(pack_command("CLIENT", "SETNAME", client_name)))
            await asyncio.gather(*replies)
    except BaseException as exc:
        if protocol is not None:
            protocol.close()
        if isinstance(exc, TimeoutError):
            raise RedisTimeoutError("timed out connecting to Redis") from exc
        if isinstance(exc, OSError):
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        raise
    return protocol


class CommandConnection:
    """Pipelined commands (``PUBLISH``) over one connection, opened on first use.

    Args:
        target: where Redis is.
        client_name: ``CLIENT SETNAME`` of the connection.
        command_timeout: seconds a reply may take; past it the connection is
            dropped and every command waiting on it fails with ``TimeoutError``.
    """

    def __init__(self, target: RedisTarget, client_name: str, command_timeout: float) -> None:
        self._target = target
        self._name = client_name
        self._timeout = command_timeout
        self._conn: _Resp | None = None
        self._connecting: asyncio.Future[_Resp] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    async def publish(self, channel: bytes, data: bytes) -> int:
        """PUBLISH; the number of subscribers that received it.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable or the connection broke.
            redis.exceptions.TimeoutError: no reply within the command timeout.
        """
        conn = self._conn
        if conn is None or not conn.open:
            conn = await self._connect()
        future = conn.command(_publish_command(channel, data))
        if self._watchdog is None:
            self._arm(conn)
        return int(await future)

    def _arm(self, conn: _Resp) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(
            self._timeout, self._check, conn, conn.last_traffic
        )

    def _check(self, conn: _Resp, traffic_then: float) -> None:
        """Drop the connection when commands waited a whole timeout with no reply."""
        self._watchdog = None
        if not conn.open or not conn._waiting:
            return
        if conn.last_traffic == traffic_then:
            conn._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout:g} s"))
            return
        self._arm(conn)

    async def _connect(self) -> _Resp:
        if self._closed:
            raise RedisConnectionError("connection closed")
        if self._connecting is None:
            # One connection attempt at a time; concurrent publishers share it.
            self._connecting = asyncio.ensure_future(_open(self._target, self._name))
        connecting = self._connecting
        try:
            conn = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        if self._closed:
            conn.close()
            raise RedisConnectionError("connection closed")
        self._conn = conn
        return conn

    def reset(self) -> None:
        """Drop the connection (after an outage it is likely dead); the next use reopens."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            try:
                conn = await connecting
            except BaseException:  # cancelled or failed: nothing to close
                conn = None
            if conn is not None:
                conn.close()
        self.reset()


class SubscriberConnection:
    """The pub/sub stream: every push message is handed to ``on_message`` in order.

    The methods mirror redis-py's ``PubSub`` (they only write; confirmations and
    pongs arrive through ``on_message`` as ``[kind, ...]`` lists of bytes).
    """

    def __init__(self, conn: _Resp) -> None:
        self._conn = conn

    @classmethod
    async def open(
        cls, target: RedisTarget, client_name: str, on_message: Callable[[Any], None]
    ) -> SubscriberConnection:
        """Connect and route every later reply to ``on_message``.

        Raises:
            redis.exceptions.ConnectionError / TimeoutError / ResponseError.
        """
        conn = await _open(target, client_name)
        conn._push = on_message
        return cls(conn)

    @property
    def last_traffic(self) -> float:
        """``time.monotonic()`` of the last bytes read."""
        return self._conn.last_traffic

    async def wait_lost(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or raise as soon as the connection is lost."""
        done, _ = await asyncio.wait([self._conn.lost], timeout=timeout)
        if done:
            raise self._conn.lost.exception() or RedisConnectionError("connection lost")

    async def subscribe(self, *channels: str) -> None:
        self._conn.write(pack_command("SUBSCRIBE", *channels))

    async def psubscribe(self, *globs: str) -> None:
        self._conn.write(pack_command("PSUBSCRIBE", *globs))

    async def unsubscribe(self, *channels: str) -> None:
        self._conn.write(pack_command("UNSUBSCRIBE", *channels))

    async def punsubscribe(self, *globs: str) -> None:
        self._conn.write(pack_command("PUNSUBSCRIBE", *globs))

    async def ping(self, data: bytes) -> None:
        self._conn.write(pack_command("PING", data))

    async def aclose(self) -> None:
        self._conn.close()
