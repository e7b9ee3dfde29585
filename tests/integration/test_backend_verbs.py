"""The backend verbs of a node, observed by real clients."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from wsgate import (
    CloseCode,
    ConnectionLost,
    InvalidState,
    InvalidTopic,
    NotConnected,
    RemoteError,
    RequestTimeout,
)

from ._client import eventually, scaled


async def test_send_reaches_one_connection(gw, mint):
    alice = await gw.connect(mint(user="alice"))
    bob = await gw.connect(mint(user="bob"))

    assert await gw.node.send(alice.cid, {"x": 1}) is True
    await alice.expect("push", data={"x": 1})
    await bob.no_message()
    assert await gw.node.send("no-such-connection", {"x": 1}) is False


async def test_send_to_user_reaches_all_of_its_connections(gw, mint):
    phone = await gw.connect(mint(user="alice"))
    laptop = await gw.connect(mint(user="alice"))
    bob = await gw.connect(mint(user="bob"))

    assert await gw.node.send_to_user("alice", "hi") == 2
    await phone.expect("push", data="hi")
    await laptop.expect("push", data="hi")
    await bob.no_message()
    assert await gw.node.send_to_user("carol", "hi") == 0


async def test_broadcast_reaches_everyone(gateway, mint):
    gw = await gateway(anonymous=True)
    clients = [
        await gw.connect(mint(user="alice")),
        await gw.connect(mint(user="bob"), msgpack=True),
        await gw.connect(None),
    ]
    await gw.node.broadcast({"notice": "maintenance"})
    for client in clients:
        await client.expect("push", data={"notice": "maintenance"})


async def test_request_reply_round_trip(gw, mint):
    client = await gw.connect(mint(user="alice"))
    task = asyncio.create_task(gw.node.request(client.cid, {"q": "time?"}, timeout=scaled(5)))

    req = await client.expect("req", data={"q": "time?"})
    await client.send({"op": "reply", "id": req["id"], "data": {"a": 42}})
    assert await task == {"a": 42}
    assert gw.node.metrics.requests_sent == 1
    assert (await gw.node.stats())["requests_in_flight"] == 0


async def test_many_requests_in_flight_answered_out_of_order(gw, mint):
    client = await gw.connect(mint(user="alice"))
    tasks = [
        asyncio.create_task(gw.node.request(client.cid, {"n": n}, timeout=scaled(5)))
        for n in range(20)
    ]
    requests = [await client.expect("req") for _ in tasks]
    assert sorted(r["data"]["n"] for r in requests) == list(range(20))
    assert len({r["id"] for r in requests}) == 20

    random.Random(7).shuffle(requests)
    for req in requests:
        await client.send({"op": "reply", "id": req["id"], "data": {"echo": req["data"]["n"]}})
    assert await asyncio.gather(*tasks) == [{"echo": n} for n in range(20)]


async def test_request_to_unknown_connection(gw):
    with pytest.raises(NotConnected):
        await gw.node.request("no-such-connection", 1)
    assert gw.node.metrics.requests_sent == 0


async def test_request_timeout(gw, mint):
    client = await gw.connect(mint(user="alice"))
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await gw.node.request(client.cid, "anyone?", timeout=scaled(0.2))
    assert scaled(0.2) <= time.monotonic() - started < scaled(2)
    await client.expect("req", data="anyone?")
    assert gw.node.metrics.request_timeouts == 1
    assert (await gw.node.stats())["requests_in_flight"] == 0


async def test_request_answered_with_an_error(gw, mint):
    client = await gw.connect(mint(user="alice"))
    task = asyncio.create_task(gw.node.request(client.cid, "do it", timeout=scaled(5)))
    req = await client.expect("req")
    error = {"code": "invalid_input", "message": "cannot do it", "data": {"field": "x"}}
    await client.send({"op": "reply", "id": req["id"], "error": error})

    with pytest.raises(RemoteError) as info:
        await task
    assert info.value.code == "invalid_input"
    assert info.value.remote_message == "cannot do it"
    assert info.value.data == {"field": "x"}


async def test_request_fails_when_the_client_disconnects(gw, mint):
    client = await gw.connect(mint(user="alice"))
    task = asyncio.create_task(gw.node.request(client.cid, "still there?", timeout=scaled(10)))
    await client.expect("req")
    started = time.monotonic()
    await client.close()

    with pytest.raises(ConnectionLost):
        await task
    assert time.monotonic() - started < scaled(2)
    assert gw.node.metrics.request_timeouts == 0


async def test_late_reply_is_dropped_and_never_resolves_another_request(gw, mint):
    client = await gw.connect(mint(user="alice"))
    with pytest.raises(RequestTimeout):
        await gw.node.request(client.cid, "first", timeout=scaled(0.1))
    first = await client.expect("req", data="first")

    second_task = asyncio.create_task(gw.node.request(client.cid, "second", timeout=scaled(5)))
    second = await client.expect("req", data="second")
    assert second["id"] == first["id"] + 1

    await client.send({"op": "reply", "id": first["id"], "data": "late"})
    await eventually(lambda: gw.node.metrics.late_replies == 1, what="late reply counted")
    assert not second_task.done()

    await client.send({"op": "reply", "id": second["id"], "data": "second's answer"})
    assert await second_task == "second's answer"
    # A duplicate reply is late too.
    await client.send({"op": "reply", "id": second["id"], "data": "again"})
    await eventually(lambda: gw.node.metrics.late_replies == 2, what="duplicate reply counted")


async def test_reply_from_another_connection_is_ignored(gw, mint):
    alice = await gw.connect(mint(user="alice"))
    mallory = await gw.connect(mint(user="mallory"))
    task = asyncio.create_task(gw.node.request(alice.cid, "for alice", timeout=scaled(5)))
    req = await alice.expect("req")

    await mallory.send({"op": "reply", "id": req["id"], "data": "from mallory"})
    await eventually(lambda: gw.node.metrics.late_replies == 1, what="foreign reply counted")
    assert not task.done()

    await alice.send({"op": "reply", "id": req["id"], "data": "from alice"})
    assert await task == "from alice"


async def test_disconnect_with_the_default_code(gw, mint):
    client = await gw.connect(mint(user="alice"))
    assert await gw.node.disconnect(client.cid) is True
    assert await client.closed() == CloseCode.DISCONNECTED == 4104
    await eventually(lambda: len(gw.node.hub) == 0, what="connection forgotten")
    assert await gw.node.disconnect(client.cid) is False


async def test_disconnect_with_an_application_code_and_reason(gw, mint):
    client = await gw.connect(mint(user="alice"))
    await gw.node.send(client.cid, "goodbye")  # queued before the close: flushed first
    assert await gw.node.disconnect(client.cid, 4500, "banned for spamming") is True

    assert await client.closed() == 4500
    assert client.close_reason == "banned for spamming"
    await client.expect("push", data="goodbye")


async def test_disconnect_reason_is_cut_at_a_character_boundary(gw, mint):
    client = await gw.connect(mint(user="alice"))
    assert await gw.node.disconnect(client.cid, 4500, "é" * 100) is True
    assert await client.closed() == 4500
    # A close reason holds at most 123 bytes of UTF-8 (RFC 6455 section 5.5.1).
    assert client.close_reason == "é" * 61


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
async def test_disconnect_refuses_close_codes_that_cannot_be_sent(gw, mint, code):
    client = await gw.connect(mint(user="alice"))
    with pytest.raises(InvalidState):
        await gw.node.disconnect(client.cid, code)
    await client.roundtrip({"op": "ping", "id": 1}, "pong")  # untouched


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 3000, 4000, 4999])
async def test_disconnect_sends_any_valid_close_code(gw, mint, code):
    client = await gw.connect(mint(user="alice"))
    assert await gw.node.disconnect(client.cid, code, "bye") is True
    assert await client.closed() == code
    assert client.close_reason == "bye"


async def test_a_closing_connection_is_no_longer_addressable(gw, mint):
    client = await gw.connect(mint(user="alice", subscribe=["news"], channels=["news"]))
    pending = asyncio.create_task(gw.node.request(client.cid, "reply?", timeout=scaled(10)))
    await client.expect("req")

    assert await gw.node.disconnect(client.cid) is True
    # At once, before the client has even read its close frame:
    assert await gw.node.connection_info(client.cid) is None
    assert await gw.node.send(client.cid, "lost") is False
    assert await gw.node.send_to_user("alice", "lost") == 0
    assert await gw.node.presence("news") == []
    assert await gw.node.disconnect(client.cid) is False
    with pytest.raises(NotConnected):
        await gw.node.request(client.cid, "another")
    with pytest.raises(ConnectionLost):
        await pending
    assert await client.closed() == CloseCode.DISCONNECTED


async def test_connection_info(gw, mint):
    token = mint(
        user="alice",
        subscribe=["news.>", "alerts"],
        channels=["alerts"],
        extra={"meta": {"plan": "pro"}},
    )
    before = time.time()
    client = await gw.connect(token, msgpack=True)
    await client.roundtrip({"op": "sub", "id": 1, "topic": "news.*"})

    info = await gw.node.connection_info(client.cid)
    assert info is not None
    assert info.id == client.cid
    assert info.node == gw.node.id
    assert info.user == "alice"
    assert info.subscriptions == ("alerts", "news.*")
    assert info.encoding == "msgpack"
    assert info.meta == {"plan": "pro"}
    assert info.remote_address == client.local_address
    assert before - 1 <= info.connected_at <= time.time()
    assert await gw.node.connection_info("no-such-connection") is None


async def test_presence(gw, mint):
    token = mint(user="u", subscribe=[">"])
    exact, wildcard, other, idle = [await gw.connect(token) for _ in range(4)]
    await exact.roundtrip({"op": "sub", "id": 1, "topic": "news.tech"})
    await wildcard.roundtrip({"op": "sub", "id": 1, "topic": "news.>"})
    await other.roundtrip({"op": "sub", "id": 1, "topic": "weather"})

    present = await gw.node.presence("news.tech")
    assert sorted(i.id for i in present) == sorted([exact.cid, wildcard.cid])
    assert [i.id for i in await gw.node.presence("weather")] == [other.cid]
    assert await gw.node.presence("sport") == []
    with pytest.raises(InvalidTopic):
        await gw.node.presence("news.*")
    assert idle.cid not in {i.id for i in present}
