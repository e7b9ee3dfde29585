"""Exactly-once delivery under interleavings a real Redis produces only rarely.

White-box: the subscriber connection is replaced by a :class:`ScriptedStream`
that records the commands the broker sends, and the test plays Redis's side
of the stream (confirmations, pongs, copies of a publication) in a chosen
order. See "Exactly once per node" in :mod:`wsgate.broker.redis` for the rules
checked here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import msgspec

from contract._media import Recorder
from wsgate.broker import keys
from wsgate.broker.redis import RedisBroker

PREFIX = "p"


class ScriptedStream:
    """Stands in for the subscriber connection: records commands; the test answers them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def subscribe(self, *names: str) -> None:
        self.sent += [("subscribe", name) for name in names]

    async def psubscribe(self, *names: str) -> None:
        self.sent += [("psubscribe", name) for name in names]

    async def unsubscribe(self, *names: str) -> None:
        self.sent += [("unsubscribe", name) for name in names]

    async def punsubscribe(self, *names: str) -> None:
        self.sent += [("punsubscribe", name) for name in names]

    async def ping(self, data: bytes) -> None:
        self.sent.append(("pong", data))

    async def aclose(self) -> None:
        pass


class Scripted:
    """A started RedisBroker whose subscriber stream the test writes."""

    def __init__(self) -> None:
        self.broker = RedisBroker("redis://unused.invalid", prefix=PREFIX)
        self.rec = Recorder("scripted")
        self.stream = ScriptedStream()
        # The state start() would leave, without a server (white-box).
        self.broker._handler = self.rec
        self.broker._pubsub = self.stream  # type: ignore[assignment]
        self.broker._online = True

    def feed(self, message: list[Any]) -> None:
        self.broker._dispatch(message)

    def answer(self, n: int | None = None) -> None:
        """Redis answers the first ``n`` (default: all) commands not answered yet."""
        n = len(self.stream.sent) if n is None else n
        answered, self.stream.sent = self.stream.sent[:n], self.stream.sent[n:]
        for kind, data in answered:
            if kind == "pong":
                self.feed([b"pong", data])
            else:
                self.feed([kind.encode(), data.encode(), 1])

    async def run(self, call: Awaitable[None]) -> None:
        """Run a subscribe/unsubscribe call to completion, Redis answering at once."""
        task = asyncio.ensure_future(call)
        await asyncio.sleep(0)
        self.answer()
        await task

    def copy_via_channel(self, topic: str, payload: Any) -> None:
        """The copy of a publication Redis sends for an exact subscription."""
        channel = keys.topic_channel(PREFIX, topic).encode()
        data = msgspec.msgpack.encode([topic, payload])
        self.feed([b"message", channel, data])

    def copy_via_glob(self, pattern: str, topic: str, payload: Any) -> None:
        """The copy Redis sends for the PSUBSCRIBEd glob of ``pattern``."""
        glob = keys.pattern_glob(PREFIX, pattern).encode()
        channel = keys.topic_channel(PREFIX, topic).encode()
        data = msgspec.msgpack.encode([topic, payload])
        self.feed([b"pmessage", glob, channel, data])


async def test_subscribe_returns_after_the_pong_not_the_confirmation() -> None:
    s = Scripted()
    task = asyncio.ensure_future(s.broker.subscribe("a.*"))
    await asyncio.sleep(0)
    assert s.stream.sent == [
        ("psubscribe", keys.pattern_glob(PREFIX, "a.*")),
        ("pong", b"wsgate-barrier:1"),
    ]
    s.answer(1)  # the psubscribe confirmation
    await asyncio.sleep(0)
    assert not task.done()
    s.answer()  # the pong
    await task
    s.copy_via_glob("a.*", "a.b", 1)
    assert s.rec.publications == [("a.b", 1)]


async def test_copies_of_one_publication_straddling_an_unsubscribe() -> None:
    s = Scripted()
    await s.run(s.broker.subscribe("s.>"))
    await s.run(s.broker.subscribe("s.x"))
    # Redis sends two copies of one publication (channel s.x, glob of s.>); the
    # node unsubscribes s.x after reading the first and before the second.
    s.copy_via_channel("s.x", 1)
    unsubscribing = asyncio.ensure_future(s.broker.unsubscribe("s.x"))
    await asyncio.sleep(0)
    s.copy_via_glob("s.>", "s.x", 1)
    s.answer()
    await unsubscribing
    s.copy_via_glob("s.>", "s.x", 2)
    assert s.rec.publications == [("s.x", 1), ("s.x", 2)]
    assert s.broker.stats.duplicates == 1


async def test_copies_of_one_publication_straddling_a_subscribe() -> None:
    s = Scripted()
    await s.run(s.broker.subscribe("s.x"))
    await s.run(s.broker.subscribe("s.*"))
    # Copies via the channel of s.x and the glob of s.*; s.> is added in between.
    s.copy_via_channel("s.x", 1)
    subscribing = asyncio.ensure_future(s.broker.subscribe("s.>"))
    await asyncio.sleep(0)  # s.> shares the glob of s.*: no PSUBSCRIBE, only a PING
    s.copy_via_glob("s.*", "s.x", 1)
    s.answer()
    await subscribing
    assert s.rec.publications == [("s.x", 1)]


async def test_a_copy_between_unsubscribe_confirmation_and_pong_is_delivered() -> None:
    s = Scripted()
    await s.run(s.broker.subscribe("s.>"))
    await s.run(s.broker.subscribe("s.x"))  # its channel is the preferred copy
    unsubscribing = asyncio.ensure_future(s.broker.unsubscribe("s.x"))
    await asyncio.sleep(0)
    s.answer(1)  # UNSUBSCRIBE confirmed: Redis sends no channel copy any more...
    s.copy_via_glob("s.>", "s.x", 1)  # ...so the glob copy must be the one delivered
    s.answer()
    await unsubscribing
    assert s.rec.publications == [("s.x", 1)]


async def test_a_copy_before_the_confirmation_of_a_new_preferred_key() -> None:
    s = Scripted()
    await s.run(s.broker.subscribe("s.>"))
    subscribing = asyncio.ensure_future(s.broker.subscribe("s.x"))
    await asyncio.sleep(0)
    s.copy_via_glob("s.>", "s.x", 1)  # published before Redis ran SUBSCRIBE
    s.answer(1)
    s.copy_via_channel("s.x", 2)  # after: two copies, one delivered
    s.copy_via_glob("s.>", "s.x", 2)
    s.answer()
    await subscribing
    s.copy_via_channel("s.x", 3)
    s.copy_via_glob("s.>", "s.x", 3)
    assert s.rec.publications == [("s.x", 1), ("s.x", 2), ("s.x", 3)]
