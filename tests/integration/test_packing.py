"""Messages queued in one event-loop tick travel packed in one frame, in order."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.node import YIELD_AFTER_DELIVERIES

from ._client import decode_frame, scaled


@pytest.mark.parametrize("msgpack", [False, True])
async def test_burst_is_packed_in_order(gw, mint, msgpack):
    client = await gw.connect(mint(user="u", subscribe=["t"], channels=["t"]), msgpack=msgpack)
    frames_before = gw.node.metrics.frames_written
    for n in range(40):  # no await yields here: all queued in the same tick
        await gw.node.publish("t", n)
    assert await gw.node.send(client.cid, "last") is True

    frame = await client.ws.recv()
    messages = decode_frame(frame, msgpack=msgpack)
    assert [m["data"] for m in messages] == [*range(40), "last"]
    assert [m["op"] for m in messages] == ["msg"] * 40 + ["push"]
    assert gw.node.metrics.frames_written == frames_before + 1


async def test_packed_frames_stay_under_the_pack_limit(gw, mint):
    client = await gw.connect(mint(user="u", subscribe=["t"], channels=["t"]))
    pad = "x" * 10_000
    for n in range(20):
        await gw.node.publish("t", {"n": n, "pad": pad})

    received = []
    frames = 0
    while len(received) < 20:
        frame = await client.ws.recv()
        assert len(frame) <= 65_536 + 2  # the packed array's brackets
        received.extend(decode_frame(frame, msgpack=False))
        frames += 1
    assert [m["data"]["n"] for m in received] == list(range(20))
    assert frames >= 3


async def test_packing_can_be_turned_off(gateway, mint):
    gw = await gateway(pack_messages=False)
    client = await gw.connect(mint(user="u", subscribe=["t"], channels=["t"]))
    for n in range(10):
        await gw.node.publish("t", n)
    for n in range(10):
        async with asyncio.timeout(scaled(2)):
            frame = await client.ws.recv()
        assert decode_frame(frame, msgpack=False) == [{"op": "msg", "topic": "t", "data": n}]


async def test_a_long_burst_of_publications_is_written_while_it_goes_on(gateway, mint):
    gw = await gateway(flush_interval=0)  # the yield alone, without the coalescing timer
    client = await gw.connect(mint(user="u", subscribe=["t"], channels=["t"]))
    frames_before = gw.node.metrics.frames_written
    written_during_burst = False
    for n in range(YIELD_AFTER_DELIVERIES + 10):  # a publisher that never waits otherwise
        await gw.node.publish("t", n)
        written_during_burst = written_during_burst or (
            gw.node.metrics.frames_written > frames_before
        )
    assert written_during_burst
    received: list[int] = []
    while len(received) < YIELD_AFTER_DELIVERIES + 10:
        async with asyncio.timeout(scaled(5)):
            received.extend(m["data"] for m in decode_frame(await client.ws.recv(), msgpack=False))
    assert received == list(range(YIELD_AFTER_DELIVERIES + 10))
