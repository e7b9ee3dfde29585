"""Real ``wsgate serve`` processes joined through a real redis-server act as one gateway.

Each test gets its own key prefix, so the nodes of one test never see another's.
Backends reach the cluster with the backend SDK from this (separate) process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

import wsgate
from contract._media import RedisServer
from integration._client import connect, scaled

LEASE = 2.0
"""Presence lease of the test nodes (seconds), short so that a dead node's entries go fast."""


async def until(check: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    """Poll the async ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class Cluster:
    """Nodes of one test: their URLs, the broker URL and the key prefix."""

    def __init__(self, redis_url: str, prefix: str, secret: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.secret = secret
        self.nodes: list[Any] = []

    def backend(self) -> wsgate.Backend:
        return wsgate.connect_backend(self.redis_url, prefix=self.prefix)

    def token(self, user: str, **grants: Any) -> str:
        return wsgate.mint_token(self.secret, user=user, **grants)


@pytest.fixture
async def cluster(
    redis_server: RedisServer, wsgate_serve: Callable[..., Any], secret: str
) -> AsyncIterator[Callable[[int], Any]]:
    """``nodes = await cluster(3)``: that many nodes on the session's redis-server."""
    prefix = "t" + uuid.uuid4().hex[:10]
    state = Cluster(redis_server.url, prefix, secret)
    async with contextlib.AsyncExitStack() as stack:

        async def start(count: int) -> Cluster:
            for _ in range(count):
                served = await stack.enter_async_context(
                    wsgate_serve(
                        "--broker",
                        redis_server.url,
                        "--node-id",
                        f"{prefix}-n{len(state.nodes)}",
                        env={
                            "WSGATE_JWT_SECRET": secret,
                            "WSGATE_PREFIX": prefix,
                            "WSGATE_PRESENCE_LEASE": str(LEASE),
                        },
                    )
                )
                state.nodes.append(served)
            return state

        yield start


async def test_publication_reaches_subscribers_on_every_node_exactly_once(cluster):
    c = await cluster(3)
    token = c.token("u", subscribe=["chat.>"], publish=["chat.>"])
    clients = [await connect(node.url, token) for node in c.nodes]
    for client in clients:
        # Two overlapping patterns: still one delivery per publication.
        await client.roundtrip({"op": "sub", "id": 1, "topic": "chat.>"})
        await client.roundtrip({"op": "sub", "id": 2, "topic": "chat.*"})
    await clients[0].send({"op": "pub", "topic": "chat.room", "data": "hi"})
    async with c.backend() as backend:
        await backend.publish("chat.room", b"\x00raw")
    for client in clients:
        received = [await client.expect("msg", topic="chat.room") for _ in range(2)]
        assert sorted(repr(m.get("data", m.get("bin"))) for m in received) == sorted(
            [repr("hi"), repr("AHJhdw==")]
        )
        await client.no_message(within=scaled(0.3))
        await client.close()


async def test_send_and_request_to_a_connection_on_another_node(cluster):
    c = await cluster(2)
    device = await connect(c.nodes[1].url, c.token("d", connection_id="dev-1"))

    async def serve_requests() -> None:
        while True:
            req = await device.expect("req", timeout=scaled(10))
            await device.send({"op": "reply", "id": req["id"], "data": {"echo": req["data"]}})

    async with c.backend() as backend:
        assert await backend.send("dev-1", "hello") is True
        await device.expect("push", data="hello")
    server = asyncio.create_task(serve_requests())
    try:
        async with c.backend() as backend:
            answers = await asyncio.gather(
                *(backend.request("dev-1", i, timeout=scaled(5)) for i in range(50))
            )
            assert answers == [{"echo": i} for i in range(50)]
            with pytest.raises(wsgate.NotConnected):
                await backend.request("dev-unknown", 1, timeout=scaled(5))
    finally:
        server.cancel()
        await device.close()


async def test_user_fan_out_across_nodes(cluster):
    c = await cluster(3)
    token = c.token("alice")
    clients = [await connect(node.url, token) for node in c.nodes]
    async with c.backend() as backend:
        assert await backend.send_to_user("alice", {"n": 1}) == 3
    for client in clients:
        await client.expect("push", data={"n": 1})
        await client.close()


async def test_takeover_across_nodes_keeps_the_newest(cluster):
    c = await cluster(2)
    token = c.token("d", connection_id="dev-2")
    old = await connect(c.nodes[0].url, token)
    new = await connect(c.nodes[1].url, token)
    assert await old.closed() == wsgate.CloseCode.TAKEN_OVER
    async with c.backend() as backend:
        info = await backend.connection_info("dev-2")
        assert info is not None and info.node.endswith("-n1")
        assert await backend.send("dev-2", "yours") is True
    await new.expect("push", data="yours")
    await new.close()


async def test_a_killed_node_leaves_no_entries_and_fails_fast(cluster, redis_server):
    c = await cluster(2)
    await connect(c.nodes[1].url, c.token("v", connection_id="dev-3"))
    async with c.backend() as backend:
        assert (await backend.connection_info("dev-3")) is not None
        os.kill(c.nodes[1].proc.pid, signal.SIGKILL)
        await asyncio.to_thread(c.nodes[1].proc.wait, scaled(10))
        started = time.monotonic()
        with pytest.raises(wsgate.NotConnected):
            await backend.request("dev-3", 1, timeout=scaled(10))
        assert time.monotonic() - started < scaled(1), "NotConnected must not wait for a timeout"

        client = aioredis.Redis.from_url(redis_server.url)
        try:

            async def only_live_node_keys() -> bool:
                keys = [k.decode() async for k in client.scan_iter(f"{c.prefix}:*")]
                return all("-n1" not in k and "dev-3" not in k for k in keys)

            await until(only_live_node_keys, LEASE + scaled(3), "the dead node's keys to expire")
            assert await backend.presence_backend.locate("dev-3") is None
            assert c.nodes[1].proc.returncode == -signal.SIGKILL
            nodes = await backend.presence_backend.nodes()
            assert nodes == [f"{c.prefix}-n0"]
        finally:
            await client.aclose()


async def test_delivery_resumes_after_redis_restarts(cluster, redis_server):
    c = await cluster(2)
    token = c.token("u", subscribe=["feed"])
    subscriber = await connect(c.nodes[1].url, token)
    await subscriber.roundtrip({"op": "sub", "id": 1, "topic": "feed"})
    async with c.backend() as backend:
        await backend.publish("feed", 1)
        await subscriber.expect("msg", data=1)
    redis_server.stop()
    redis_server.start()
    # No node is restarted: their brokers reconnect and resubscribe by themselves.
    async with c.backend() as backend:

        async def delivered() -> bool:
            await backend.publish("feed", 2)
            try:
                await subscriber.expect("msg", data=2, timeout=scaled(0.5))
            except (AssertionError, TimeoutError):
                return False
            return True

        await until(delivered, scaled(15), "delivery after the restart")
        # Presence was repaired too: the connection is addressable again.
        await until(
            lambda: backend.send(subscriber.cid, "back"), LEASE + scaled(5), "presence repair"
        )
    await subscriber.expect("push", data="back")
    await subscriber.close()


async def test_local_traffic_flows_while_redis_is_down(gateway, redis_server, mint):
    gw = await gateway(broker=redis_server.url, prefix="t" + uuid.uuid4().hex[:10])
    client = await gw.connect(mint(user="u", subscribe=["local"], connection_id="dev-9"))
    await client.roundtrip({"op": "sub", "id": 1, "topic": "local"})
    redis_server.stop()
    try:
        with pytest.raises(wsgate.BrokerError):
            await gw.node.publish("local", "still here")
        await client.expect("msg", topic="local", data="still here")
        assert gw.node.metrics.broker_errors == 1
        assert await gw.node.send("dev-9", "direct") is True
        await client.expect("push", data="direct")
    finally:
        redis_server.start()
