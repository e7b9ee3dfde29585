"""Several nodes in one process on a shared memory bus act as one gateway.

The same routing code serves Redis clusters (tests/cluster runs real processes);
here it is exercised without a network so each rule is checked in isolation.
"""

from __future__ import annotations

import asyncio

import pytest

import wsgate
from wsgate import ConnectionLost, NotConnected, RemoteError, RequestTimeout
from wsgate.broker.memory import MemoryBus

from ._client import eventually, scaled


@pytest.fixture
async def pair(gateway):
    bus = MemoryBus()
    a = await gateway(bus=bus, node_id="node-a")
    b = await gateway(bus=bus, node_id="node-b")
    return a, b


async def test_publish_on_one_node_reaches_subscribers_on_both_once(pair, mint):
    a, b = pair
    token = mint(user="u", subscribe=["news.>"])
    on_a, on_b = await a.connect(token), await b.connect(token)
    for client in (on_a, on_b):
        await client.roundtrip({"op": "sub", "id": 1, "topic": "news.>"})
        await client.roundtrip({"op": "sub", "id": 2, "topic": "news.*"})
    await a.node.publish("news.x", {"n": 1})
    for client in (on_a, on_b):
        await client.expect("msg", topic="news.x", data={"n": 1})
        await client.no_message()


async def test_send_and_request_reach_a_connection_on_another_node(pair, mint):
    a, b = pair
    device = await b.connect(mint(user="d", connection_id="dev-1"))
    assert await a.node.send("dev-1", b"\x01\x02") is True
    await device.expect("push")

    async def answer() -> None:
        req = await device.expect("req")
        await device.send({"op": "reply", "id": req["id"], "data": {"temp": 21}})

    task = asyncio.create_task(answer())
    assert await a.node.request("dev-1", {"cmd": "status"}, timeout=scaled(2)) == {"temp": 21}
    await task


async def test_remote_request_errors_map_to_the_same_exceptions(pair, mint):
    a, b = pair
    device = await b.connect(mint(user="d", connection_id="dev-2"))
    with pytest.raises(NotConnected):
        await a.node.request("nobody", 1, timeout=scaled(1))
    with pytest.raises(RequestTimeout):
        await a.node.request("dev-2", 1, timeout=scaled(0.3))
    await device.expect("req")

    async def refuse() -> None:
        req = await device.expect("req")
        await device.send(
            {"op": "reply", "id": req["id"], "error": {"code": "busy", "message": "later"}}
        )

    task = asyncio.create_task(refuse())
    with pytest.raises(RemoteError) as caught:
        await a.node.request("dev-2", 1, timeout=scaled(2))
    assert (caught.value.code, caught.value.remote_message) == ("busy", "later")
    await task

    async def hang_up() -> None:
        await device.expect("req")
        await device.close()

    task = asyncio.create_task(hang_up())
    with pytest.raises(ConnectionLost):
        await a.node.request("dev-2", 1, timeout=scaled(2))
    await task


async def test_user_fan_out_across_nodes_counts_every_connection(pair, mint):
    a, b = pair
    token = mint(user="alice")
    clients = [await a.connect(token), await b.connect(token), await b.connect(token)]
    assert await a.node.send_to_user("alice", "hi") == 3
    for client in clients:
        await client.expect("push", data="hi")
    assert await b.node.send_to_user("nobody", "hi") == 0


async def test_takeover_across_nodes_keeps_the_newest(pair, mint):
    a, b = pair
    token = mint(user="d", connection_id="dev-3")
    old = await a.connect(token)
    new = await b.connect(token)
    assert await old.closed() == 4103
    info = await a.node.connection_info("dev-3")
    assert info is not None and info.node == "node-b"
    assert await a.node.send("dev-3", "still here?") is True
    await new.expect("push", data="still here?")


async def test_info_presence_and_disconnect_across_nodes(pair, mint):
    a, b = pair
    token = mint(user="p", subscribe=["room.*"], connection_id="dev-4")
    remote = await b.connect(token)
    await remote.roundtrip({"op": "sub", "id": 1, "topic": "room.*"})
    local = await a.connect(mint(user="q", subscribe=["room.1"]))
    await local.roundtrip({"op": "sub", "id": 1, "topic": "room.1"})
    info = await a.node.connection_info("dev-4")
    assert info is not None and (info.user, info.subscriptions) == ("p", ("room.*",))
    present = await a.node.presence("room.1")
    assert sorted(i.user or "" for i in present) == ["p", "q"]
    assert await a.node.disconnect("dev-4", 4501, "bye") is True
    assert await remote.closed() == 4501
    assert await a.node.connection_info("dev-4") is None
    assert await a.node.disconnect("dev-4") is False


async def test_broadcast_reaches_every_node(pair, mint):
    a, b = pair
    clients = [await a.connect(mint(user="x")), await b.connect(mint(user="y"))]
    await b.node.broadcast({"all": True})
    for client in clients:
        await client.expect("push", data={"all": True})


async def test_backend_sdk_reaches_connections_on_every_node(pair, mint):
    a, b = pair
    bus = a.node.broker._bus  # the pair's shared bus
    on_a = await a.connect(mint(user="ann", subscribe=["t.*"], connection_id="dev-a"))
    on_b = await b.connect(mint(user="ann", subscribe=["t.*"], connection_id="dev-b"))
    for client in (on_a, on_b):
        await client.roundtrip({"op": "sub", "id": 1, "topic": "t.*"})
    async with wsgate.connect_backend("memory://", bus=bus) as backend:
        await backend.publish("t.1", "p")
        await backend.broadcast("b")
        assert await backend.send("dev-b", "s") is True
        assert await backend.send_to_user("ann", "u") == 2
        for client in (on_a, on_b):
            await client.expect("msg", topic="t.1", data="p")
            await client.expect("push", data="b")
        await on_b.expect("push", data="s")
        for client in (on_a, on_b):
            await client.expect("push", data="u")

        async def answer() -> None:
            req = await on_a.expect("req")
            await on_a.send({"op": "reply", "id": req["id"], "data": req["data"] * 2})

        task = asyncio.create_task(answer())
        assert await backend.request("dev-a", 21, timeout=scaled(2)) == 42
        await task
        info = await backend.connection_info("dev-b")
        assert info is not None and info.node == "node-b"
        assert sorted(i.id for i in await backend.presence("t.1")) == ["dev-a", "dev-b"]
        with pytest.raises(NotConnected):
            await backend.request("ghost", 1, timeout=scaled(1))
        assert await backend.disconnect("dev-a", 4500, "bye") is True
        assert await on_a.closed() == 4500


async def test_backend_stats_gather_every_node(pair, mint):
    a, b = pair
    await a.connect(mint(user="x"))
    await b.connect(mint(user="y"))
    await b.connect(mint(user="y"))
    async with wsgate.connect_backend("memory://", bus=a.node.broker._bus) as backend:
        stats = await backend.stats()
    assert {node: figures["connections"] for node, figures in stats.items()} == {
        "node-a": 1,
        "node-b": 2,
    }


async def _answer_once(client, data=None):
    req = await client.expect("req")
    await client.send({"op": "reply", "id": req["id"], "data": data or req["data"]})


async def test_a_request_follows_a_connection_that_moved_to_another_node(pair, mint, gateway):
    a, b = pair
    c = await gateway(bus=a.node.broker._bus, node_id="node-c")
    token = mint(user="d", connection_id="dev-m")
    # After the first request a.node's router remembers node-b; then the device
    # reconnects through node-c, and finally leaves.
    for holder, data in ((b, "one"), (c, "two")):
        device = await holder.connect(token)
        task = asyncio.create_task(_answer_once(device))
        assert await a.node.request("dev-m", data, timeout=scaled(2)) == data
        await task
        await device.close()
        await eventually(lambda holder=holder: holder.node.hub.get("dev-m") is None)
    with pytest.raises(NotConnected):
        await a.node.request("dev-m", "three", timeout=scaled(1))
