"""Helpers of the presence contract suite: media that start presences, a cuttable proxy.

A *presence medium* joins presences: a :class:`MemoryBus`, or the session's
Redis under a key prefix unique to the test. ``await medium("n1")`` starts a
presence as node ``n1`` (``None``: a read-only participant, as a backend
process is); every presence started is closed at teardown (a no-op for one
already closed or abandoned). Times are in the suite's unit (:func:`scaled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from contract._media import RedisServer, scaled
from wsgate.broker import Presence, create_presence
from wsgate.broker.memory import MemoryBus, MemoryPresence
from wsgate.broker.redis_presence import RedisPresence

DEFAULT_LEASE = 5.0
"""Lease (s, scaled) of Redis presences in tests that do not wait for expiry."""


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0
) -> float:
    """Poll ``check`` until it holds; fail after ``timeout`` (already scaled).

    Presence state changes in Redis, with nothing to await, so this polls every
    10 ms. Returns the seconds it took.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await check():
                    break
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"not {what} within {timeout:g} s")
    return loop.time() - began


class PresenceMedium:
    """Presences joined to one medium; closes all of them at the end."""

    kind = ""

    def __init__(self) -> None:
        self.started: list[Presence] = []

    def new(self, **options: Any) -> Presence:
        raise NotImplementedError

    async def __call__(self, node_id: str | None, **options: Any) -> Presence:
        """A presence on this medium, started as ``node_id`` (backend options allowed)."""
        presence = self.new(**options)
        await presence.start(node_id)
        self.started.append(presence)
        return presence

    async def aclose(self) -> None:
        for presence in reversed(self.started):
            await presence.close()


class MemoryPresenceMedium(PresenceMedium):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.bus = MemoryBus()

    def new(self, **options: Any) -> Presence:
        assert not options, f"the memory presence takes no options: {options}"
        return MemoryPresence(self.bus)


class RedisPresenceMedium(PresenceMedium):
    """The session's Redis under a fresh prefix; ``raw`` is a plain client on it."""

    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"  # instead of FLUSHALL
        self.raw = redis.asyncio.Redis.from_url(server.url)

    def new(self, **options: Any) -> Presence:
        """Through ``create_presence`` (as a node builds it) unless options say otherwise."""
        lease = options.pop("lease", scaled(DEFAULT_LEASE))
        url = options.pop("url", self.server.url)
        if not options:
            return create_presence(url, prefix=self.prefix, lease=lease)
        return RedisPresence(url, prefix=self.prefix, lease=lease, **options)

    async def aclose(self) -> None:
        await super().aclose()
        await self.raw.aclose()


class Proxy:
    """A TCP relay to Redis that can be cut (a network partition, Redis keeps its data).

    While cut, open connections are closed and new ones are closed on accept.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.down = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.down = True
        for writer in list(self._writers):
            writer.close()

    def heal(self) -> None:
        self.down = False

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.down:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self._writers |= {writer, up_writer}
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers -= {writer, up_writer}
                await self._shut(up_writer)
        finally:
            await self._shut(writer)
            self._handlers.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    @staticmethod
    async def _shut(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
