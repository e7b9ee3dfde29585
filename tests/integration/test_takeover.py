"""Claimed connection ids: a newer connection takes over, and the old one's cleanup spares it."""

from __future__ import annotations

import asyncio

import pytest

from wsgate import CloseCode, ConnectionLost

from ._client import eventually


async def test_token_cid_becomes_the_connection_id(gw, mint):
    client = await gw.connect(mint(user="dev", connection_id="device-1"))
    assert client.cid == "device-1"
    info = await gw.node.connection_info("device-1")
    assert info is not None and info.remote_address == client.local_address


async def test_newer_connection_takes_over_and_survives_the_old_ones_cleanup(gw, mint):
    token = mint(user="dev", connection_id="device-1", subscribe=["dev.>"], channels=["dev.>"])
    old = await gw.connect(token)
    new = await gw.connect(token)
    assert new.cid == old.cid == "device-1"

    assert await old.closed() == CloseCode.TAKEN_OVER
    # The old connection's close has completed on the server side too.
    await eventually(lambda: len(gw.server.connections) == 1, what="old socket gone")
    assert gw.node.metrics.takeovers == 1

    info = await gw.node.connection_info("device-1")
    assert info is not None
    assert info.remote_address == new.local_address
    assert info.subscriptions == ("dev.>",)
    assert await gw.node.send("device-1", "direct") is True
    await new.expect("push", data="direct")
    assert await gw.node.send_to_user("dev", "to the user") == 1
    await new.expect("push", data="to the user")
    await gw.node.publish("dev.status", "still subscribed")
    await new.expect("msg", topic="dev.status", data="still subscribed")
    assert gw.node.hub.patterns() == ["dev.>"]


async def test_takeover_fails_the_old_connections_requests(gw, mint):
    token = mint(user="dev", connection_id="device-1")
    old = await gw.connect(token)
    pending = asyncio.create_task(gw.node.request("device-1", "for the old one"))
    await old.expect("req")
    new = await gw.connect(token)

    with pytest.raises(ConnectionLost):
        await pending
    assert await old.closed() == CloseCode.TAKEN_OVER
    assert await gw.node.send("device-1", "ok") is True
    await new.expect("push", data="ok")


async def test_concurrent_connections_with_the_same_cid(gw, mint):
    rounds = 20
    survivors = []
    for n in range(rounds):
        cid = f"race-{n}"
        token = mint(user="racer", connection_id=cid)
        pair = await asyncio.gather(gw.connect(token), gw.connect(token))
        await eventually(lambda n=n: gw.node.metrics.takeovers == n + 1, what="takeover")

        info = await gw.node.connection_info(cid)
        assert info is not None
        [survivor] = [c for c in pair if c.local_address == info.remote_address]
        [loser] = [c for c in pair if c is not survivor]
        assert await loser.closed() == CloseCode.TAKEN_OVER
        assert await gw.node.send(cid, n) is True
        await survivor.expect("push", data=n)
        survivors.append(survivor)

    # The losers' cleanups removed none of the survivors.
    await eventually(lambda: len(gw.server.connections) == rounds, what="losers gone")
    assert len(gw.node.hub) == rounds
    assert await gw.node.send_to_user("racer", "all") == rounds
    for survivor in survivors:
        await survivor.expect("push", data="all")
