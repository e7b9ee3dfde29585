"""The call-queue contract: client calls queued for backend workers, on every backend.

``enqueue_call`` hands an envelope to one live worker of a namespace (False
when there is none); ``serve_calls`` is one worker. Calls are taken at least
once: a worker that stops without finishing a call loses it to another worker
(at once in memory, after ``claim_after`` on Redis). Each test runs once per
backend (``broker_factory``); the last ones are Redis-specific.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio

from contract._media import Medium, Node, RedisMedium, RedisServer, scaled
from wsgate.broker import keys
from wsgate.errors import InvalidState

CLAIM_AFTER = 0.5  # short, so that a dead worker's calls move on quickly


class Worker:
    """One ``serve_calls`` loop on a started broker, recording what it handled."""

    def __init__(
        self,
        node: Node,
        namespace: str,
        *,
        claim_after: float = 30.0,
        work: Callable[[bytes], Awaitable[None]] | None = None,
        max_in_flight: int = 64,
    ) -> None:
        self.node = node
        self.namespace = namespace
        self.claim_after = claim_after
        self.work = work
        self.max_in_flight = max_in_flight
        self.started: list[bytes] = []
        self.done: list[bytes] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def handle(self, data: bytes) -> None:
        self.started.append(data)
        self.changed.set()
        if self.work is not None:
            await self.work(data)
        self.done.append(data)
        self.changed.set()

    async def start(self) -> Worker:
        ready = asyncio.Event()
        self.task = asyncio.create_task(
            self.node.broker.serve_calls(
                self.namespace,
                self.node.id,
                self.handle,
                claim_after=self.claim_after,
                max_in_flight=self.max_in_flight,
                on_ready=ready.set,
            )
        )
        waiter = asyncio.ensure_future(ready.wait())
        try:
            await asyncio.wait(
                [self.task, waiter], timeout=scaled(5), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self.task.done():
            self.task.result()
        assert ready.is_set(), f"worker {self.node.id} not live within {scaled(5):g} s"
        return self

    async def stop(self) -> None:
        """Cancel the loop (a worker dying: calls in hand are not acknowledged)."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


class Workers:
    """Starts workers; stops every one still running at teardown."""

    def __init__(self) -> None:
        self.started: list[Worker] = []

    async def __call__(self, node: Node, namespace: str = "orders", **options: Any) -> Worker:
        worker = Worker(node, namespace, **options)
        self.started.append(worker)
        return await worker.start()

    async def aclose(self) -> None:
        for worker in self.started:
            await worker.stop()


@pytest.fixture
async def workers(broker_factory: Medium) -> AsyncIterator[Workers]:
    """``await workers(node, "orders", ...)``: a started worker; all stopped at teardown."""
    started = Workers()
    try:
        yield started
    finally:
        await started.aclose()


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` (scaled) seconds."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"no {what} within {scaled(timeout):g} s")


def jobs(n: int, tag: str = "job") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


# -- every backend --------------------------------------------------------------------


async def test_enqueue_without_a_live_worker_is_refused(
    broker_factory: Medium, workers: Workers
) -> None:
    a, b = await broker_factory(2)
    assert await a.broker.enqueue_call("orders", b"x") is False
    await workers(b, "billing")  # another namespace does not count
    assert await a.broker.enqueue_call("orders", b"x") is False
    assert await a.broker.enqueue_call("billing", b"x") is True


async def test_a_worker_gets_each_envelope_once_intact(
    broker_factory: Medium, workers: Workers
) -> None:
    a, b = await broker_factory(2)
    worker = await workers(b)
    sent = [*jobs(20), b"", b"\x00\xff raw \x80 bytes"]
    for data in sent:
        assert await a.broker.enqueue_call("orders", data) is True
    await until(lambda: len(worker.done) >= len(sent), "envelopes")
    # A last one after everything: whatever was queued before has been taken by now.
    assert await a.broker.enqueue_call("orders", b"last") is True
    await until(lambda: b"last" in worker.done, "last envelope")
    assert sorted(worker.done) == sorted([*sent, b"last"])


async def test_two_workers_share_the_load(broker_factory: Medium, workers: Workers) -> None:
    a, b, c = await broker_factory(3)

    async def work(data: bytes) -> None:
        await asyncio.sleep(0.01)

    one, two = await workers(b, work=work), await workers(c, work=work)
    sent = jobs(50)
    for data in sent:
        assert await a.broker.enqueue_call("orders", data) is True
        await asyncio.sleep(0.001)
    await until(lambda: len(one.done) + len(two.done) >= 50, "50 calls handled")
    assert one.done and two.done, (len(one.done), len(two.done))
    assert sorted(one.done + two.done) == sorted(sent), "a call was lost or handled twice"


async def test_a_handler_error_does_not_stop_the_worker(
    broker_factory: Medium, workers: Workers
) -> None:
    a, b = await broker_factory(2)

    async def work(data: bytes) -> None:
        if data == b"bad":
            raise RuntimeError("handler bug")

    worker = await workers(b, work=work)
    await a.broker.enqueue_call("orders", b"bad")
    await a.broker.enqueue_call("orders", b"good")
    await until(lambda: b"good" in worker.done, "the next call")


async def test_concurrency_is_bounded_per_worker(broker_factory: Medium, workers: Workers) -> None:
    a, b = await broker_factory(2)
    release = asyncio.Event()

    async def work(data: bytes) -> None:
        await release.wait()

    worker = await workers(b, work=work, max_in_flight=3)
    for data in jobs(8):
        await a.broker.enqueue_call("orders", data)
    await until(lambda: len(worker.started) == 3, "three calls in flight")
    await asyncio.sleep(scaled(0.2))
    assert len(worker.started) == 3
    release.set()
    await until(lambda: len(worker.done) == 8, "every call")


async def test_a_dead_workers_call_goes_to_another_worker(
    broker_factory: Medium, workers: Workers
) -> None:
    a, b, c = await broker_factory(3)
    hang = asyncio.Event()

    async def stuck(data: bytes) -> None:
        await hang.wait()  # never set: this worker dies holding the call

    dying = await workers(b, claim_after=CLAIM_AFTER, work=stuck)
    assert await a.broker.enqueue_call("orders", b"precious") is True
    await until(lambda: dying.started == [b"precious"], "the call in the first worker")
    other = await workers(c, claim_after=CLAIM_AFTER)
    await dying.stop()  # killed mid-call: no acknowledgement
    await until(lambda: other.done == [b"precious"], "the call taken over", timeout=5)
    assert dying.done == []


async def test_a_stopped_worker_is_no_longer_live(broker_factory: Medium, workers: Workers) -> None:
    a, b = await broker_factory(2)
    worker = await workers(b)
    assert await a.broker.enqueue_call("orders", b"1") is True
    await until(lambda: worker.done == [b"1"], "the call")
    await worker.stop()
    assert await a.broker.enqueue_call("orders", b"2") is False


async def test_closing_the_broker_ends_its_workers(
    broker_factory: Medium, workers: Workers
) -> None:
    [a] = await broker_factory(1)
    worker = await workers(a)
    task = worker.task
    assert task is not None
    await a.close()
    async with asyncio.timeout(scaled(5)):
        with pytest.raises(InvalidState):
            await task


async def test_serving_needs_a_started_broker(broker_factory: Medium) -> None:
    broker = broker_factory.new_broker()

    async def handle(data: bytes) -> None:
        pass

    with pytest.raises(InvalidState):
        await broker.serve_calls("orders", "w", handle, claim_after=1.0)
    with pytest.raises(InvalidState):
        await broker.enqueue_call("orders", b"x")


# -- Redis only -----------------------------------------------------------------------


@pytest.fixture
async def redis_workers(redis_medium: RedisMedium) -> AsyncIterator[Workers]:
    started = Workers()
    try:
        yield started
    finally:
        await started.aclose()


@pytest.fixture
def restart_guard(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session server, started again after the test if the test left it stopped."""
    try:
        yield redis_server
    finally:
        if redis_server.proc is None:
            redis_server.start()


async def test_a_long_call_is_not_taken_from_a_live_worker(
    redis_medium: RedisMedium, redis_workers: Workers
) -> None:
    a, b, c = await redis_medium(3)

    async def slow(data: bytes) -> None:
        await asyncio.sleep(scaled(4 * CLAIM_AFTER))

    one = await redis_workers(b, claim_after=CLAIM_AFTER, work=slow)
    two = await redis_workers(c, claim_after=CLAIM_AFTER, work=slow)
    assert await a.broker.enqueue_call("orders", b"long") is True
    await until(lambda: len(one.done) + len(two.done) == 1, "the long call", timeout=10)
    await asyncio.sleep(scaled(CLAIM_AFTER))
    assert len(one.started) + len(two.started) == 1, "a live worker's call was taken over"


async def test_redis_layout_and_lifetimes(
    redis_medium: RedisMedium, redis_workers: Workers
) -> None:
    a, b = await redis_medium(2)
    worker = await redis_workers(b, "orders")
    await a.broker.enqueue_call("orders", b"1")
    await until(lambda: worker.done == [b"1"], "the call")
    raw = redis_medium.raw
    stream = keys.call_stream(redis_medium.prefix, "orders")
    live = keys.call_workers(redis_medium.prefix, "orders")
    assert stream == f"{redis_medium.prefix}:calls:orders"
    assert live == f"{redis_medium.prefix}:workers:orders"
    assert await raw.type(stream) == b"stream"
    assert [g["name"] for g in await raw.xinfo_groups(stream)] == [keys.CALL_GROUP.encode()]
    assert 0 < await raw.pttl(stream) <= 3600_000
    assert [m for m, _ in await raw.zrange(live, 0, -1, withscores=True)] == [b.id.encode()]
    assert 0 < await raw.pttl(live) <= 3_000
    # Acknowledged calls are deleted: the stream holds only what is unanswered.
    async with asyncio.timeout(scaled(5)):
        while True:
            if await raw.xlen(stream) == 0:
                break
            await asyncio.sleep(0.01)
    await worker.stop()
    assert await raw.zcard(live) == 0  # a stopping worker leaves at once


async def test_a_worker_survives_a_redis_restart(
    redis_medium: RedisMedium,
    redis_workers: Workers,
    restart_guard: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsgate.broker.redis_calls")
    a, b = await redis_medium(2)
    worker = await redis_workers(b)
    assert await a.broker.enqueue_call("orders", b"before") is True
    await until(lambda: worker.done == [b"before"], "the first call")

    restart_guard.stop()  # the stream, its group and the live set are gone
    await asyncio.sleep(scaled(0.5))
    restart_guard.start()

    async def queued() -> bool:
        with contextlib.suppress(Exception):
            return await a.broker.enqueue_call("orders", b"after")
        return False

    async with asyncio.timeout(scaled(10)):
        while True:  # until the worker is live again
            if await queued():
                break
            await asyncio.sleep(0.05)
    await until(lambda: b"after" in worker.done, "a call after the restart", timeout=10)
    assert Counter(worker.done)[b"after"] == 1
    records = [r for r in caplog.records if r.name == "wsgate.broker.redis_calls"]
    lost = [r for r in records if r.levelno == logging.WARNING]
    assert len(lost) == 1, [r.message for r in lost]  # once per outage, not per retry
    assert any("back on Redis" in r.message for r in records)


async def test_enqueue_is_one_script(redis_medium: RedisMedium, redis_workers: Workers) -> None:
    # No live worker: nothing is written at all (no stream created by XADD).
    [a] = await redis_medium(1)
    assert await a.broker.enqueue_call("ghost", b"x") is False
    raw: redis.asyncio.Redis = redis_medium.raw
    assert await raw.exists(keys.call_stream(redis_medium.prefix, "ghost")) == 0
