"""The flusher: direct traffic at the end of the tick, fan-out coalesced under load."""

from __future__ import annotations

import asyncio
from typing import cast

from wsgate.server.connection import Connection, Flusher

INTERVAL = 0.05


class Recorded:
    """Stands in for a Connection: records when it was flushed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: list[tuple[str, float]]) -> None:
        self.loop = loop
        self.log = log
        self.name = f"c{id(self)}"

    def flush(self) -> None:
        self.log.append((self.name, self.loop.time()))


def conn(c: Recorded) -> Connection:
    return cast(Connection, c)


async def ticks(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_fan_out_after_a_quiet_spell_goes_out_at_the_end_of_the_tick() -> None:
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    flusher = Flusher(loop, INTERVAL)
    flusher.mark_fanout(conn(Recorded(loop, log)))
    await ticks()
    assert len(log) == 1


async def test_fan_out_soon_after_a_flush_waits_for_the_interval() -> None:
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    flusher = Flusher(loop, INTERVAL)
    flusher.mark_fanout(conn(Recorded(loop, log)))
    await ticks()
    first = log[0][1]
    flusher.mark_fanout(conn(Recorded(loop, log)))
    flusher.mark_fanout(conn(Recorded(loop, log)))
    await ticks()
    assert len(log) == 1  # held back
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(log) == 3
    assert all(t - first >= INTERVAL * 0.9 for _, t in log[1:])


async def test_direct_traffic_never_waits_and_takes_waiting_fan_out_along() -> None:
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    flusher = Flusher(loop, INTERVAL)
    flusher.mark_fanout(conn(Recorded(loop, log)))
    await ticks()
    waiting = Recorded(loop, log)
    flusher.mark_fanout(conn(waiting))
    await ticks()
    assert len(log) == 1
    direct = Recorded(loop, log)
    flusher.mark(conn(direct))  # a reply, say
    await ticks()
    assert {name for name, _ in log[1:]} == {waiting.name, direct.name}
    assert abs(log[1][1] - log[2][1]) < INTERVAL / 10  # in the same flush, at once
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(log) == 3  # the cancelled timer flushed nothing twice


async def test_interval_zero_flushes_every_tick() -> None:
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []
    flusher = Flusher(loop, 0.0)
    for _ in range(3):
        flusher.mark_fanout(conn(Recorded(loop, log)))
        await ticks()
    assert len(log) == 3
