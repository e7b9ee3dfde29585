"""Keepalive: the server pings idle connections and drops those that never answer.

The server sweeps its connections once per second, so these tests take a few seconds.
"""

from __future__ import annotations

import time

import pytest

from wsgate import CloseCode

from ._client import RawClient, scaled

PING_INTERVAL = 0.3
PONG_TIMEOUT = 0.3
SWEEP = 1.0  # wsgate.server.listener._SWEEP_INTERVAL


async def test_client_that_never_answers_pings_is_closed(gateway, mint):
    gw = await gateway(ping_interval=scaled(PING_INTERVAL), pong_timeout=scaled(PONG_TIMEOUT))
    silent = await RawClient.connect(gw.url, mint(user="mute"))
    try:
        await silent.expect("welcome")
        started = time.monotonic()
        # Reads (and counts) pings, never answers them.
        code = await silent.closed(timeout=PING_INTERVAL + PONG_TIMEOUT + 2 * SWEEP + 1)
        elapsed = time.monotonic() - started
    finally:
        await silent.close()

    assert code == CloseCode.KEEPALIVE_TIMEOUT
    assert silent.pings >= 1
    assert elapsed >= scaled(PING_INTERVAL + PONG_TIMEOUT)
    assert gw.node.metrics.keepalive_timeouts == 1


async def test_clients_that_answer_pings_stay_connected(gateway, mint):
    gw = await gateway(ping_interval=scaled(PING_INTERVAL), pong_timeout=scaled(PONG_TIMEOUT))
    token = mint(user="alive", subscribe=["news"], channels=["news"])
    library = await gw.connect(token)  # websockets answers pings by itself
    raw = await RawClient.connect(gw.url, token)
    raw.answer_pings = True
    try:
        raw_cid = (await raw.expect("welcome"))["cid"]
        # Idle for three sweeps: each one pings both clients (idle > ping_interval).
        with pytest.raises(TimeoutError):
            await raw.closed(timeout=3 * SWEEP + 0.2)
        assert raw.pings >= 2
        assert gw.node.hub.get(raw_cid) is not None
    finally:
        await raw.close()

    assert gw.node.metrics.keepalive_timeouts == 0
    await gw.node.publish("news", "still here")
    await library.expect("msg", topic="news", data="still here")
