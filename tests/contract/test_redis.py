"""What only the Redis broker has: outages, interest filtering, envelopes, URLs.

The outage tests stop the session's redis-server (SIGKILL) and start it again
on the same port; each leaves it running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from contract._media import Node, Recorder, RedisMedium, RedisServer, scaled
from wsgate.broker import create_broker, keys
from wsgate.broker.redis import RedisBroker
from wsgate.errors import BrokerError, ConfigError, InvalidState
from wsgate.publication import Publication

LOGGER = "wsgate.broker.redis"


def stats(node: Node) -> Any:
    assert isinstance(node.broker, RedisBroker)
    return node.broker.stats


def online(node: Node) -> bool:
    assert isinstance(node.broker, RedisBroker)
    return node.broker.online


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` (broker state has no event to await) until it holds."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"not {what} within {scaled(timeout):g} s")


async def wait_online(*nodes: Node) -> None:
    await eventually(lambda: all(online(node) for node in nodes), "online")


async def publish_until_received(
    publisher: Node, receiver: Node, topic: str, first: int, timeout: float = 10.0
) -> int:
    """Publish ``first``, ``first + 1``... on ``topic`` until ``receiver`` has one of them.

    Publications made before the receiver has subscribed again are lost (at most
    once), and publishing may fail while the publisher reconnects. Returns the
    next unused number.
    """
    n = first
    async with asyncio.timeout(scaled(timeout)):
        while not any(isinstance(p, int) and p >= first for _, p in receiver.rec.publications):
            try:
                await publisher.publish(topic, n)
                n += 1
            except BrokerError as exc:
                assert exc.temporary
            await asyncio.sleep(0.02)
    return n


@pytest.fixture
def restart_guard(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session server, started again after the test if the test left it stopped."""
    try:
        yield redis_server
    finally:
        if redis_server.proc is None:
            redis_server.start()


# -- outages --------------------------------------------------------------------------


async def test_delivery_resumes_after_redis_restarts(
    redis_medium: RedisMedium, restart_guard: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    a, b = await redis_medium(2)
    await a.broker.subscribe("r.*")
    await a.broker.subscribe("r.>")  # overlapping: still exactly once after the restart
    await a.broker.subscribe("r.x")
    for i in range(5):
        await b.publish("r.x", i)
    await a.rec.publication(5)

    restart_guard.stop()
    await asyncio.sleep(scaled(0.3))  # an outage long enough for a few failed retries
    restart_guard.start()
    n = await publish_until_received(b, a, "r.x", 100)
    await wait_online(a, b)  # b's own broadcasts (the fence) need its subscriber back
    for i in range(n, n + 20):
        await b.publish("r.x", i)
    await redis_medium.settle()

    payloads = [p for _, p in a.rec.publications]
    assert payloads[:5] == [0, 1, 2, 3, 4]
    assert payloads[-20:] == list(range(n, n + 20))
    assert len(payloads) == len(set(payloads)), "a publication was delivered twice"
    assert stats(a).reconnects == stats(b).reconnects == 1
    records = [r for r in caplog.records if r.name == LOGGER]
    lost = [r for r in records if r.levelno == logging.WARNING]
    back = [r for r in records if r.levelno == logging.INFO and "reconnected" in r.message]
    assert len(lost) == 2, [r.message for r in lost]  # one per broker, not one per retry
    assert len(back) == 2


async def test_publish_while_redis_is_down_raises_a_temporary_error(
    redis_medium: RedisMedium, restart_guard: RedisServer
) -> None:
    a, b = await redis_medium(2)
    restart_guard.stop()
    with pytest.raises(BrokerError) as info:
        await b.publish("down.x", 1)
    assert info.value.temporary
    with pytest.raises(BrokerError) as info:
        await b.broker.broadcast("hello?")
    assert info.value.temporary
    # Subscribing meanwhile records the wish and returns; the reconnection applies it.
    async with asyncio.timeout(scaled(2 * 5.0 + 2)):
        await a.broker.subscribe("down.*")
    restart_guard.start()
    await wait_online(a, b)
    await publish_until_received(b, a, "down.x", 1)


async def test_unsubscribe_while_down_is_applied_on_reconnection(
    redis_medium: RedisMedium, restart_guard: RedisServer
) -> None:
    a, b = await redis_medium(2)
    await a.broker.subscribe("gone.*")
    await a.broker.subscribe("kept.*")
    restart_guard.stop()
    async with asyncio.timeout(scaled(12)):
        await a.broker.unsubscribe("gone.*")
    restart_guard.start()
    await wait_online(a, b)
    await publish_until_received(b, a, "kept.x", 1)
    assert await redis_medium.receivers("gone.x") == 0


async def test_a_killed_subscriber_connection_is_rebuilt(redis_medium: RedisMedium) -> None:
    a, b = await redis_medium(2)
    await a.broker.subscribe("k.*")
    killed = await redis_medium.raw.client_kill_filter(_type="pubsub")
    assert killed >= 2
    await publish_until_received(b, a, "k.x", 1)
    assert stats(a).reconnects == 1


async def test_an_unanswered_ping_means_a_dead_connection(
    redis_medium: RedisMedium, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = redis_medium.redis_broker(command_timeout=0.3, health_interval=0.2)
    a = await redis_medium.node(broker=broker)
    b = await redis_medium.node()
    await a.broker.subscribe("p.*")
    # Redis stops answering every client for a while, like a half-open connection.
    await redis_medium.raw.client_pause(1200, all=True)
    await eventually(lambda: stats(a).reconnects == 1, "reconnected", timeout=5)
    assert any("no answer to PING" in r.message for r in caplog.records)
    await publish_until_received(b, a, "p.x", 1)


async def test_close_during_an_outage_is_clean(
    redis_medium: RedisMedium, restart_guard: RedisServer
) -> None:
    a, _b = await redis_medium(2)
    await a.broker.subscribe("c.*")
    restart_guard.stop()
    await eventually(lambda: not online(a), "offline", timeout=5)
    async with asyncio.timeout(scaled(5)):
        await a.close()
        await a.close()


async def test_start_without_redis_raises_a_temporary_error(redis_server: RedisServer) -> None:
    stopped = RedisServer(redis_server.executable, redis_server.workdir)  # a free port
    broker = RedisBroker(stopped.url)
    with pytest.raises(BrokerError) as info:
        await broker.start("lonely", Recorder("lonely"))
    assert info.value.temporary
    with pytest.raises(InvalidState):
        await broker.subscribe("a.b")
    await broker.close()


# -- interest, filtering, envelopes ---------------------------------------------------


async def test_overapproximating_globs_are_filtered_before_decoding(
    redis_medium: RedisMedium,
) -> None:
    a, b = await redis_medium(2)
    await a.broker.subscribe("f.*")
    # The glob "{prefix}:t:f.*" also matches f.x.y: such arrivals are dropped unread.
    await redis_medium.raw.publish(keys.topic_channel(redis_medium.prefix, "f.x.y"), b"\xc1")
    await b.publish("f.x.y", 1)
    await b.publish("f.x", 2)
    await redis_medium.settle()
    assert a.rec.publications == [("f.x", 2)]
    s = stats(a)
    assert (s.received, s.filtered, s.decode_errors, s.delivered) == (3, 2, 0, 1)


async def test_duplicates_are_counted_not_delivered(redis_medium: RedisMedium) -> None:
    a, b = await redis_medium(2)
    await a.broker.subscribe("d.*")
    await a.broker.subscribe("d.x")
    await b.publish("d.x", 1)
    await redis_medium.settle()
    assert a.rec.publications == [("d.x", 1)]
    assert (stats(a).received, stats(a).duplicates) == (2, 1)


async def test_undecodable_messages_are_counted_and_skipped(
    redis_medium: RedisMedium, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await redis_medium(2)
    await a.broker.subscribe("bad.*")
    channel = keys.topic_channel(redis_medium.prefix, "bad.x")
    await redis_medium.raw.publish(channel, b"\xc1 not msgpack")
    await redis_medium.raw.publish(channel, msgspec.msgpack.encode({"not": "an envelope"}))
    await redis_medium.raw.publish(channel, msgspec.msgpack.encode(["bad.other", 1]))
    await redis_medium.raw.publish(keys.broadcast_channel(redis_medium.prefix), b"")
    await b.publish("bad.y", "fine")
    assert await a.rec.publication() == ("bad.y", "fine")
    await redis_medium.settle()
    assert stats(a).decode_errors == 4
    assert stats(b).decode_errors == 1  # the broadcast
    assert a.rec.publications == [("bad.y", "fine")]
    logged = [r for r in caplog.records if "undecodable" in r.message]
    assert 1 <= len(logged) <= 4


async def test_a_failing_handler_does_not_stop_the_reader(redis_medium: RedisMedium) -> None:
    class Exploding(Recorder):
        def on_publication(self, publication: Publication) -> None:
            if publication.payload == "boom":
                raise RuntimeError("handler bug")
            super().on_publication(publication)

    a = await redis_medium.node(recorder=Exploding("exploding"))
    b = await redis_medium.node()
    await a.broker.subscribe("h.*")
    await b.publish("h.x", "boom")
    await b.publish("h.x", "after")
    assert await a.rec.publication() == ("h.x", "after")
    assert stats(a).handler_errors == 1


async def test_unencodable_payload_raises_type_error(redis_medium: RedisMedium) -> None:
    [a] = await redis_medium(1)
    with pytest.raises(TypeError):
        await a.publish("t.x", 2**70)
    with pytest.raises(TypeError):
        await a.publish("t.x", object())


async def test_other_prefixes_are_invisible(
    redis_medium: RedisMedium, redis_server: RedisServer
) -> None:
    a = await redis_medium.node("shared-id")
    other = RedisMedium(redis_server)
    try:
        b = await other.node("shared-id")  # the same node id under another prefix is fine
        await a.broker.subscribe(">")
        await b.broker.subscribe(">")
        await b.publish("x.y", 1)
        await a.publish("x.y", 2)
        await other.settle()
        await redis_medium.settle()
        assert a.rec.publications == [("x.y", 2)]
        assert b.rec.publications == [("x.y", 1)]
    finally:
        await other.aclose()


# -- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["redis://localhost", "redis://:secret@10.0.0.1:6380/2", "rediss://cache.example:6379"]
)
def test_create_broker_builds_a_redis_broker(url: str) -> None:
    broker = create_broker(url, prefix="app")
    assert isinstance(broker, RedisBroker)
    assert "secret" not in repr(broker)


@pytest.mark.parametrize("url", ["redis://localhost:port", "nats://localhost", "http://x"])
def test_create_broker_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        create_broker(url)


@pytest.mark.parametrize("prefix", ["", "has space", "tab\t"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        RedisBroker("redis://localhost", prefix=prefix)
