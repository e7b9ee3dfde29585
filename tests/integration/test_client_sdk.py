"""The client SDK against real gateways: verbs, pushes, requests, reconnects, the sync wrapper."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

import pytest

import wsgate
from wsgate import ClientState, CloseCode, ConnectionClosed, ConnectionLost, RemoteError
from wsgate.sdk.client import Message

from ._client import eventually, scaled

CONNECTING, CONNECTED = ClientState.CONNECTING, ClientState.CONNECTED
RECONNECTING, CLOSED = ClientState.RECONNECTING, ClientState.CLOSED

FAST = {"backoff_base": scaled(0.01), "backoff_cap": scaled(0.05)}
"""Backoff settings that keep reconnect tests quick."""


class States:
    """An ``on_state`` callback that records each state and when it came."""

    def __init__(self) -> None:
        self.seen: list[ClientState] = []
        self.times: list[float] = []

    def __call__(self, state: ClientState) -> None:
        self.seen.append(state)
        self.times.append(time.monotonic())


async def within(awaitable: Any, seconds: float = 2.0) -> Any:
    async with asyncio.timeout(scaled(seconds)):
        return await awaitable


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"  # closed: connecting is refused at once


# -- verbs --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_publish_and_subscribe_round_trip(gw, mint, encoding):
    token = mint(user="alice", subscribe=["chat.>"], publish=["chat.>"])
    async with wsgate.connect(gw.url, token, encoding=encoding) as client:
        conn = gw.node.hub.get(client.connection_id)
        assert conn is not None and conn.codec.name == encoding
        assert client.user == "alice"
        wildcard = await client.subscribe("chat.*")
        exact = await client.subscribe("chat.lobby")

        await client.publish("chat.lobby", {"text": "hi"})
        await client.publish("chat.room", b"\x00\xff raw")
        await client.publish("chat.a.b", "not matched by chat.*")
        await gw.node.publish("chat.lobby", b"\x01\x02")

        got = [await within(anext(wildcard)) for _ in range(3)]
        assert got == [
            Message("chat.lobby", {"text": "hi"}),
            Message("chat.room", b"\x00\xff raw"),
            Message("chat.lobby", b"\x01\x02"),
        ]
        assert [await within(anext(exact)) for _ in range(2)] == [got[0], got[2]]


async def test_async_for_directly_and_unsubscribe_on_exit(gw, mint):
    async with wsgate.connect(gw.url, mint(user="bob", subscribe=["news.>"])) as client:

        async def publish_once_subscribed() -> None:
            await eventually(lambda: gw.node.hub.patterns() == ["news.>"])
            await gw.node.publish("news.a", 1)
            await gw.node.publish("news.b.c", 2)

        publisher = asyncio.create_task(publish_once_subscribed())
        seen = []
        async with asyncio.timeout(scaled(2)):
            async for message in client.subscribe("news.>"):
                seen.append((message.topic, message.data))
                if len(seen) == 2:
                    break
        await publisher
        assert seen == [("news.a", 1), ("news.b.c", 2)]

        async with client.subscribe("news.x") as sub:
            assert sub.active and "news.x" in gw.node.hub.patterns()
        assert not sub.active
        await eventually(lambda: "news.x" not in gw.node.hub.patterns(), what="unsubscribed")
        assert [m async for m in sub] == []


async def test_the_server_keeps_a_pattern_while_another_iterator_holds_it(gw, mint):
    async with wsgate.connect(gw.url, mint(user="bob", subscribe=["a.*"])) as client:
        first = await client.subscribe("a.*")
        second = await client.subscribe("a.*")
        await first.unsubscribe()
        await first.unsubscribe()  # idempotent
        await gw.node.publish("a.b", "still here")
        assert await within(anext(second)) == Message("a.b", "still here")
        await second.unsubscribe()
        await eventually(lambda: gw.node.hub.patterns() == [], what="last one unsubscribed")


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_call_answered_by_a_node_method(gw, mint, encoding):
    @gw.node.method("math.add")
    async def add(ctx: wsgate.CallContext) -> int:
        return int(sum(ctx.data))

    @gw.node.method("blob.echo")
    async def echo(ctx: wsgate.CallContext) -> Any:
        return ctx.data

    token = mint(user="alice", call=["math.*", "blob.*"])
    async with wsgate.connect(gw.url, token, encoding=encoding) as client:
        assert await client.call("math.add", [1, 2, 3]) == 6
        assert await client.call("blob.echo", b"\x00\x01") == b"\x00\x01"
        assert await client.call("blob.echo") is None


async def test_error_answers_raise_remote_error_and_the_connection_stays(gw, mint):
    @gw.node.method("orders.create")
    async def create(ctx: wsgate.CallContext) -> None:
        raise RemoteError("invalid_input", "qty must be positive", {"field": "qty"})

    token = mint(user="alice", subscribe=["own.>"], call=["orders.>"])
    async with wsgate.connect(gw.url, token) as client:
        with pytest.raises(RemoteError) as info:
            await client.publish("chat.lobby", "hi")
        assert info.value.code == "permission_denied"
        with pytest.raises(RemoteError) as info:
            await client.subscribe("other.>")
        assert info.value.code == "permission_denied"
        with pytest.raises(RemoteError) as info:
            async for _ in client.subscribe("other.x"):
                pass
        assert info.value.code == "permission_denied"
        with pytest.raises(RemoteError) as info:
            await client.call("orders.create", {"qty": 0})
        assert (info.value.code, info.value.remote_message, info.value.data) == (
            "invalid_input",
            "qty must be positive",
            {"field": "qty"},
        )
        with pytest.raises(RemoteError) as info:
            await client.call("orders.unknown")
        assert info.value.code == "unknown_method"
        with pytest.raises(wsgate.InvalidTopic):
            client.subscribe("own..x")
        with pytest.raises(wsgate.InvalidTopic):
            await client.publish("own.*", 1)

        await client.subscribe("own.>")  # still connected, still usable
        assert client.state is CONNECTED


async def test_call_without_an_answer_times_out(gw, mint):
    @gw.node.method("slow.op")
    async def slow(ctx: wsgate.CallContext) -> None:
        await asyncio.sleep(scaled(10))

    async with wsgate.connect(gw.url, mint(user="alice", call=["slow.*"])) as client:
        started = time.monotonic()
        with pytest.raises(wsgate.RequestTimeout, match=r"slow\.op"):
            await client.call("slow.op", timeout=scaled(0.2))
        assert time.monotonic() - started < scaled(1)


# -- pushes and requests ----------------------------------------------------------------


async def test_pushes_reach_callbacks_and_iterators(gw, mint):
    async with wsgate.connect(gw.url, mint(user="dev"), encoding="msgpack") as client:
        plain: list[Any] = []
        awaited: list[Any] = []
        client.on_push(plain.append)

        @client.on_push
        async def record(data: Any) -> None:
            awaited.append(data)

        stream = client.pushes()
        assert await gw.node.send(client.connection_id, {"n": 1}) is True
        assert await gw.node.send_to_user("dev", b"\x01") == 1
        await gw.node.broadcast("everyone")

        expected = [{"n": 1}, b"\x01", "everyone"]
        assert [await within(anext(stream)) for _ in expected] == expected
        assert plain == expected
        await eventually(lambda: awaited == expected, what="async callback")


async def test_on_request_answers_backend_requests(gw, mint):
    async with wsgate.connect(gw.url, mint(user="dev")) as client:
        unblock = asyncio.Event()

        @client.on_request
        async def handle(data: Any) -> Any:
            if data == "fail":
                raise RemoteError("invalid_input", "no", {"field": "x"})
            if data == "crash":
                raise RuntimeError("boom")
            if data == "wait":
                await unblock.wait()
            elif data == "release":
                unblock.set()
            return {"echo": data} if isinstance(data, str | dict) else data

        cid = client.connection_id
        timeout = scaled(2)
        assert await gw.node.request(cid, {"cmd": "status"}, timeout) == {"echo": {"cmd": "status"}}
        assert await gw.node.request(cid, b"\x00\x01", timeout) == b"\x00\x01"
        # Requests run concurrently: the first is answered after the second.
        waiting = asyncio.create_task(gw.node.request(cid, "wait", timeout))
        assert await gw.node.request(cid, "release", timeout) == {"echo": "release"}
        assert await waiting == {"echo": "wait"}

        with pytest.raises(RemoteError) as info:
            await gw.node.request(cid, "fail", timeout)
        assert (info.value.code, info.value.remote_message, info.value.data) == (
            "invalid_input",
            "no",
            {"field": "x"},
        )
        with pytest.raises(RemoteError) as info:
            await gw.node.request(cid, "crash", timeout)
        assert info.value.code == "client_error" and "boom" in info.value.remote_message


async def test_requests_without_a_handler_are_refused(gw, mint):
    async with wsgate.connect(gw.url, mint(user="dev")) as client:
        with pytest.raises(RemoteError) as info:
            await gw.node.request(client.connection_id, "anyone?", scaled(2))
        assert info.value.code == "unsupported"


# -- reconnects -----------------------------------------------------------------------


async def test_reconnects_after_a_reconnectable_close_and_resubscribes(gw, mint):
    states = States()
    token = mint(user="alice", subscribe=["chat.*"])
    async with wsgate.connect(gw.url, token, on_state=states, **FAST) as client:
        sub = await client.subscribe("chat.*")
        await gw.node.publish("chat.a", 1)
        assert await within(anext(sub)) == Message("chat.a", 1)
        first_cid = client.connection_id

        assert await gw.node.disconnect(first_cid, CloseCode.SLOW_CONSUMER) is True
        await eventually(lambda: states.seen.count(CONNECTED) == 2, what="reconnected")
        assert client.connection_id != first_cid  # the token claims no id
        assert gw.node.hub.patterns() == ["chat.*"]

        await gw.node.publish("chat.b", 2)
        assert await within(anext(sub)) == Message("chat.b", 2)  # the same iterator
    assert states.seen == [CONNECTING, CONNECTED, RECONNECTING, CONNECTED, CLOSED]


async def test_in_flight_calls_fail_on_a_disconnect_and_are_not_retried(gw, mint):
    started = asyncio.Event()
    runs = 0

    @gw.node.method("slow.op")
    async def slow(ctx: wsgate.CallContext) -> str:
        nonlocal runs
        runs += 1
        started.set()
        await asyncio.sleep(scaled(0.5))
        return "late"

    states = States()
    token = mint(user="alice", call=["slow.*"])
    async with wsgate.connect(gw.url, token, on_state=states, **FAST) as client:
        call = asyncio.create_task(client.call("slow.op", timeout=scaled(5)))
        await within(started.wait())
        await gw.node.disconnect(client.connection_id, CloseCode.SHUTDOWN)
        with pytest.raises(ConnectionLost) as info:
            await within(call)
        assert isinstance(info.value.__cause__, ConnectionClosed)
        assert info.value.__cause__.code == CloseCode.SHUTDOWN

        await eventually(lambda: states.seen.count(CONNECTED) == 2, what="reconnected")
        assert await within(client.call("slow.op")) == "late"
        assert runs == 2  # the lost call was not sent again


async def test_bad_token_ends_the_client_at_once(gw):
    states = States()
    client = wsgate.connect(gw.url, "not-a-token", on_state=states, **FAST)
    with pytest.raises(ConnectionClosed) as info:
        await within(client.start())
    assert info.value.code == CloseCode.AUTH_FAILED
    assert states.seen == [CONNECTING, CLOSED]
    with pytest.raises(ConnectionClosed):
        await client.publish("a", 1)


async def test_taken_over_connection_does_not_reconnect(gw, mint):
    token = mint(user="dev", subscribe=["dev.>"], connection_id="device-1")
    states = States()
    async with wsgate.connect(gw.url, token, on_state=states, **FAST) as old:
        sub = await old.subscribe("dev.>")
        async with wsgate.connect(gw.url, token) as new:
            assert new.connection_id == old.connection_id == "device-1"
            with pytest.raises(ConnectionClosed) as info:
                await within(anext(sub))
            assert info.value.code == CloseCode.TAKEN_OVER
            with pytest.raises(ConnectionClosed):
                await within(old.wait_closed())
            assert RECONNECTING not in states.seen and old.state is CLOSED
            stream = new.pushes()
            assert await gw.node.send("device-1", "to the new one")
            assert await within(anext(stream)) == "to the new one"


async def test_application_close_ends_iterators_and_waiters(gw, mint):
    @gw.node.method("slow.op")
    async def slow(ctx: wsgate.CallContext) -> None:
        await asyncio.sleep(scaled(5))

    states = States()
    token = mint(user="spammer", subscribe=["chat.*"], call=["slow.*"])
    async with wsgate.connect(gw.url, token, on_state=states, **FAST) as client:
        sub = await client.subscribe("chat.*")
        pushes = client.pushes()
        call = asyncio.create_task(client.call("slow.op"))
        await eventually(lambda: gw.node.metrics.calls == 1, what="call arrived")
        await gw.node.disconnect(client.connection_id, 4500, "banned")

        with pytest.raises(ConnectionLost):
            await within(call)
        for iterator in (sub, pushes):
            with pytest.raises(ConnectionClosed) as info:
                await within(anext(iterator))
            assert (info.value.code, info.value.reason) == (4500, "banned")
        with pytest.raises(StopAsyncIteration):
            await anext(sub)  # raised once, then exhausted
        with pytest.raises(ConnectionClosed):
            await client.publish("chat.x", 1)
        assert states.seen == [CONNECTING, CONNECTED, CLOSED]


async def test_no_reconnect_when_turned_off(gw, mint):
    async with wsgate.connect(gw.url, mint(user="a"), reconnect=False) as client:
        await gw.node.disconnect(client.connection_id, CloseCode.SLOW_CONSUMER)
        with pytest.raises(ConnectionClosed) as info:
            await within(client.wait_closed())
        assert info.value.code == CloseCode.SLOW_CONSUMER


async def test_token_expired_is_terminal_without_a_token_provider(gw, mint):
    async with wsgate.connect(gw.url, mint(user="a"), **FAST) as client:
        await gw.node.disconnect(client.connection_id, CloseCode.TOKEN_EXPIRED)
        with pytest.raises(ConnectionClosed) as info:
            await within(client.wait_closed())
        assert info.value.code == CloseCode.TOKEN_EXPIRED


async def test_token_provider_is_called_on_each_connect_and_refreshes(gw, mint):
    tokens = [mint(user="alice", ttl=2), mint(user="alice")]  # the first expires live
    handed: list[str] = []

    async def provide() -> str:
        handed.append(tokens[min(len(handed), 1)])
        return handed[-1]

    states = States()
    async with wsgate.connect(gw.url, token_provider=provide, on_state=states, **FAST) as client:
        assert handed == tokens[:1] and client.user == "alice"
        await eventually(lambda: states.seen.count(CONNECTED) == 2, timeout=4, what="expiry")
        assert handed == tokens
        await gw.node.disconnect(client.connection_id, CloseCode.SLOW_CONSUMER)
        await eventually(lambda: states.seen.count(CONNECTED) == 3, what="reconnected")
        assert len(handed) == 3
    assert gw.node.metrics.token_expirations == 1


async def test_backoff_retries_with_jitter_until_closed():
    base, cap = scaled(0.02), scaled(0.1)
    states = States()
    client = wsgate.connect(
        unused_url(), "token", on_state=states, backoff_base=base, backoff_cap=cap
    )
    starting = asyncio.create_task(client.start())
    await eventually(lambda: states.seen.count(RECONNECTING) >= 9, timeout=5, what="retries")
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(wsgate.InvalidState):
        await within(starting)
    assert states.seen[0] is CONNECTING and states.seen[-1] is CLOSED

    retried_at = [t for s, t in zip(states.seen, states.times, strict=True) if s is RECONNECTING]
    gaps = [later - earlier for earlier, later in itertools.pairwise(retried_at)]
    ceilings = [min(cap, base * 2**attempt) for attempt in range(len(gaps))]
    slack = scaled(0.05)  # the refused attempt itself, and scheduling
    assert all(gap <= ceiling + slack for gap, ceiling in zip(gaps, ceilings, strict=True))
    # Full jitter: delays are drawn below the ceiling, not at it.
    assert any(gap < 0.75 * ceiling for gap, ceiling in zip(gaps, ceilings, strict=True))

    seen = len(states.seen)
    await asyncio.sleep(cap * 3)
    assert len(states.seen) == seen  # close() stopped the retries


async def test_close_is_idempotent_and_ends_everything(gw, mint):
    states = States()
    client = wsgate.connect(gw.url, mint(user="a", subscribe=["x"]), on_state=states)
    async with client:
        sub = await client.subscribe("x")
        pushes = client.pushes()
    await client.close()
    assert states.seen == [CONNECTING, CONNECTED, CLOSED]
    await eventually(lambda: not gw.server.connections, what="socket closed")
    assert [m async for m in sub] == [] and [p async for p in pushes] == []
    await client.wait_closed()  # closed by us: no error
    with pytest.raises(wsgate.InvalidState):
        await client.publish("x", 1)
    with pytest.raises(wsgate.InvalidState):
        client.subscribe("x")


async def test_client_pings_keep_the_connection(gw, mint):
    states = States()
    token = mint(user="a", subscribe=["x"])
    async with wsgate.connect(gw.url, token, ping_interval=scaled(0.05), on_state=states) as client:
        await asyncio.sleep(scaled(0.3))  # several pings, each answered in time
        sub = await client.subscribe("x")
        await gw.node.publish("x", 1)
        assert await within(anext(sub)) == Message("x", 1)
    assert states.seen == [CONNECTING, CONNECTED, CLOSED]


# -- blocking wrapper -------------------------------------------------------------------


async def test_sync_client_end_to_end(gw, mint):
    @gw.node.method("math.add")
    async def add(ctx: wsgate.CallContext) -> int:
        return int(sum(ctx.data))

    token = mint(user="alice", subscribe=["chat.*"], publish=["chat.*"], call=["math.*"])

    def script() -> tuple[Any, ...]:
        with wsgate.connect_sync(gw.url, token, encoding="msgpack") as client:
            sub = client.subscribe("chat.*", timeout=scaled(2))
            client.publish("chat.lobby", {"text": "hi"})
            client.publish("chat.bin", b"\x00")
            received = [next(sub), next(sub)]
            total = client.call("math.add", [1, 2])
            with pytest.raises(TimeoutError):
                sub.get(timeout=scaled(0.1))
            with pytest.raises(RemoteError):
                client.publish("elsewhere", 1)
            sub.unsubscribe()
            rest = list(sub)
            user = client.user
        client.close()  # idempotent
        return user, received, total, rest

    user, received, total, rest = await within(asyncio.to_thread(script), 10)
    assert user == "alice" and total == 3 and rest == []
    assert received == [Message("chat.lobby", {"text": "hi"}), Message("chat.bin", b"\x00")]


async def test_sync_client_raises_what_ends_it(gw):
    def script() -> None:
        wsgate.connect_sync(gw.url, "not-a-token")

    with pytest.raises(ConnectionClosed) as info:
        await within(asyncio.to_thread(script), 10)
    assert info.value.code == CloseCode.AUTH_FAILED
