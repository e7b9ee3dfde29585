"""Helpers of the broker contract suite: redis-server, recording handler, media.

A *medium* joins brokers (a :class:`MemoryBus`, or one Redis server under a key
prefix unique to the test); a :class:`Recorder` is the handler each broker is
started with. Times are in seconds scaled by ``WSGATE_TEST_TIME_SCALE``
(:func:`scaled`).
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio

from wsgate.broker import Broker, create_broker, keys
from wsgate.broker.memory import MemoryBroker, MemoryBus
from wsgate.broker.redis import RedisBroker
from wsgate.publication import Publication

UNIT = float(os.environ.get("WSGATE_TEST_TIME_SCALE", "1.0"))


def scaled(seconds: float) -> float:
    """``seconds`` in the test time unit."""
    return seconds * UNIT


# -- redis-server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` process this suite owns; stoppable and restartable on one port."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on :attr:`port` and wait until it answers PING."""
        assert self.proc is None, "already running"
        self.starts += 1
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [
                    self.executable,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + scaled(10)
        while not _answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                logs = "\n".join(p.read_text() for p in sorted(self.workdir.glob("*.log")))
                pytest.fail(f"redis-server did not start on port {self.port}:\n{logs}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL, like a crash) and reap it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=scaled(10))


# -- recording handler ----------------------------------------------------------------

FENCE = "__fence__"


class Recorder:
    """A BrokerHandler that records what it receives and lets tests await it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.publications: list[tuple[str, Any]] = []
        self.broadcasts: list[Any] = []
        self.direct: list[bytes] = []
        self.fences: list[int] = []
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Recorder {self.name}>"

    def on_publication(self, publication: Publication) -> None:
        self.publications.append((publication.topic, publication.payload))
        self._changed.set()

    def on_broadcast(self, payload: Any) -> None:
        if isinstance(payload, dict) and FENCE in payload:
            self.fences.append(payload[FENCE])
        else:
            self.broadcasts.append(payload)
        self._changed.set()

    def on_direct(self, data: bytes) -> None:
        self.direct.append(data)
        self._changed.set()

    @property
    def topics(self) -> list[str]:
        return [topic for topic, _ in self.publications]

    async def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = 5.0
    ) -> None:
        """Wait until ``condition()`` holds; fail the test after ``timeout`` (scaled)."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(
                f"{self.name}: no {what} within {scaled(timeout):g} s; "
                f"publications={self.publications!r} broadcasts={self.broadcasts!r}"
            )

    async def publication(self, n: int = 1, timeout: float = 5.0) -> tuple[str, Any]:
        """The ``n``-th publication received (1-based), awaited."""
        await self.wait_until(lambda: len(self.publications) >= n, f"publication #{n}", timeout)
        return self.publications[n - 1]


# -- media ----------------------------------------------------------------------------


class Node:
    """A started broker and its recorder."""

    def __init__(self, broker: Broker, recorder: Recorder, node_id: str) -> None:
        self.broker = broker
        self.rec = recorder
        self.id = node_id
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        await self.broker.close()

    async def publish(self, topic: str, payload: Any = None) -> None:
        await self.broker.publish(Publication(topic, payload))


class Medium:
    """Brokers joined to one medium; closes all of them at the end."""

    kind = ""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self._ids = itertools.count(1)
        self._fences = itertools.count(1)

    def new_broker(self) -> Broker:
        raise NotImplementedError

    async def node(
        self,
        node_id: str | None = None,
        *,
        broker: Broker | None = None,
        recorder: Recorder | None = None,
    ) -> Node:
        """A started broker (a new one on this medium by default) with a fresh recorder."""
        node_id = node_id or f"node{next(self._ids)}"
        broker = broker if broker is not None else self.new_broker()
        recorder = recorder if recorder is not None else Recorder(node_id)
        await broker.start(node_id, recorder)
        node = Node(broker, recorder, node_id)
        self.nodes.append(node)
        return node

    async def __call__(self, n: int) -> list[Node]:
        """``n`` started brokers on this medium."""
        return [await self.node() for _ in range(n)]

    async def settle(self) -> None:
        """Fence: everything published before this call has reached every live node."""
        live = [node for node in self.nodes if not node.closed]
        assert live, "settle() needs a live node"
        fence = next(self._fences)
        await live[0].broker.broadcast({FENCE: fence})
        for node in live:
            await node.rec.wait_until(partial(operator.contains, node.rec.fences, fence), "fence")

    async def receivers(self, topic: str) -> int | None:
        """How many Redis connections a PUBLISH on ``topic`` reaches (None: not Redis).

        Redis answers PUBLISH with the number of subscriptions that got the
        message: 0 proves that no node's connection saw it.
        """
        return None

    async def aclose(self) -> None:
        for node in reversed(self.nodes):
            await node.broker.close()


class MemoryMedium(Medium):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.bus = MemoryBus()

    def new_broker(self) -> Broker:
        return MemoryBroker(self.bus)


class RedisMedium(Medium):
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"  # instead of FLUSHALL
        self.raw = redis.asyncio.Redis.from_url(server.url)

    def new_broker(self) -> Broker:
        return create_broker(self.server.url, prefix=self.prefix)

    def redis_broker(self, **options: Any) -> RedisBroker:
        """A RedisBroker on this medium with non-default options."""
        return RedisBroker(self.server.url, prefix=self.prefix, **options)

    async def receivers(self, topic: str) -> int | None:
        # A well-formed envelope ([topic, payload], see wsgate.broker.redis): a node
        # that is subscribed records a publication, not a decoding error.
        probe = msgspec.msgpack.encode([topic, "probe"])
        count: int = await self.raw.publish(keys.topic_channel(self.prefix, topic), probe)
        return count

    async def aclose(self) -> None:
        await super().aclose()
        await self.raw.aclose()
