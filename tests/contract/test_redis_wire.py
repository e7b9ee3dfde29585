"""The broker's own RESP connections against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contract._media import RedisServer, scaled
from wsgate.broker.redis_wire import CommandConnection, RedisTarget, SubscriberConnection


def target(server: RedisServer) -> RedisTarget:
    return RedisTarget.from_url(server.url, connect_timeout=scaled(2))


async def test_pipelined_publishes_get_their_own_replies_in_order(
    redis_server: RedisServer,
) -> None:
    received: list[Any] = []
    arrived = asyncio.Event()
    wanted = 1 + 334  # the confirmation, then every third of 1,000 publications

    def on_message(message: Any) -> None:
        received.append(message)
        if len(received) in (1, wanted):
            arrived.set()

    sub = await SubscriberConnection.open(target(redis_server), "t-sub", on_message)
    await sub.subscribe("wire.one")
    await asyncio.sleep(0)
    conn = CommandConnection(target(redis_server), "t-pub", command_timeout=scaled(2))
    try:
        async with asyncio.timeout(scaled(5)):
            await arrived.wait()  # the subscription confirmation
        arrived.clear()
        # 1,000 publishes in one tick: one write, replies matched in order.
        channels = [b"wire.one" if i % 3 == 0 else b"wire.none" for i in range(1000)]
        counts = await asyncio.gather(
            *(conn.publish(ch, b"%d" % i) for i, ch in enumerate(channels))
        )
        assert counts == [1 if ch == b"wire.one" else 0 for ch in channels]
        async with asyncio.timeout(scaled(5)):
            await arrived.wait()
        assert len(received) == wanted
        assert received[0][:2] == [b"subscribe", b"wire.one"]
        assert [m[2] for m in received[1:]] == [b"%d" % i for i in range(0, 1000, 3)]
    finally:
        await conn.aclose()
        await sub.aclose()


async def test_credentials_from_the_url_and_a_wrong_password(redis_server: RedisServer) -> None:
    admin = Redis.from_url(redis_server.url)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "wire-user", "on", ">s3cret", "~*", "&*", "+@all"
        )
        good = RedisTarget.from_url(
            f"redis://wire-user:s3cret@127.0.0.1:{redis_server.port}/0", scaled(2)
        )
        assert "s3cret" not in repr(good) and "wire-user" not in repr(good)
        conn = CommandConnection(good, "t-auth", command_timeout=scaled(2))
        assert await conn.publish(b"wire.nobody", b"x") == 0
        await conn.aclose()
        bad = RedisTarget.from_url(
            f"redis://wire-user:wrong@127.0.0.1:{redis_server.port}/0", scaled(2)
        )
        conn = CommandConnection(bad, "t-auth", command_timeout=scaled(2))
        with pytest.raises(ResponseError) as caught:
            await conn.publish(b"wire.nobody", b"x")
        assert "wrong" not in str(caught.value).replace("WRONGPASS", "")
        await conn.aclose()
    finally:
        await admin.execute_command("ACL", "DELUSER", "wire-user")
        await admin.aclose()


async def test_an_unanswered_publish_times_out_and_the_next_one_reconnects(
    redis_server: RedisServer,
) -> None:
    admin = Redis.from_url(redis_server.url)
    conn = CommandConnection(target(redis_server), "t-stall", command_timeout=0.3)
    try:
        assert await conn.publish(b"wire.nobody", b"x") == 0
        await admin.client_pause(800, all=True)
        with pytest.raises(RedisTimeoutError):
            async with asyncio.timeout(scaled(3)):
                await conn.publish(b"wire.nobody", b"x")
        await asyncio.sleep(0.8)
        assert await conn.publish(b"wire.nobody", b"x") == 0
    finally:
        await conn.aclose()
        await admin.aclose()
