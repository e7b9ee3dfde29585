"""Misbehaving clients get their documented code; the node and other clients carry on.

Every test here ends with :func:`still_serving`: an unrelated client, connected
before the misbehaviour, still receives publications, and a new client can connect.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest

from wsgate import CloseCode

from ._client import Client, RawClient, eventually

_checks = itertools.count()


async def start(gateway, mint, **fields):
    """A gateway with ``fields`` changed, and an observer subscribed to ``news.>``."""
    gw = await gateway(**fields)
    observer = await gw.connect(mint(user="observer", subscribe=["news.>"], channels=["news.>"]))
    return gw, observer


async def still_serving(gw, mint, observer: Client) -> None:
    n = next(_checks)
    await gw.node.publish("news.check", {"check": n})
    await observer.expect("msg", topic="news.check", data={"check": n})
    newcomer = await gw.connect(mint(user="newcomer"))
    await newcomer.roundtrip({"op": "ping", "id": 1}, "pong")


@pytest.mark.parametrize("frame", ["{not json", '{"op": "ping"', "\x00", '{"op": "ping"} x'])
async def test_malformed_json_closes_with_4102(gateway, mint, frame):
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice"))
    await client.ws.send(frame)
    assert await client.closed() == CloseCode.PROTOCOL_ERROR
    assert gw.node.metrics.protocol_errors == 1
    await still_serving(gw, mint, observer)


@pytest.mark.parametrize("frame", [b"\xc1", b"\x81\xa2op", b"\x82\xa2op\xa4ping\xa2id"])
async def test_malformed_msgpack_closes_with_4102(gateway, mint, frame):
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice"), msgpack=True)
    await client.ws.send(frame)
    assert await client.closed() == CloseCode.PROTOCOL_ERROR
    assert gw.node.metrics.protocol_errors == 1
    await still_serving(gw, mint, observer)


@pytest.mark.parametrize(
    "frame", ["[1, 2]", "[]", "42", '"ping"', "null", "true", '[{"op": "ping", "id": 1}]']
)
async def test_json_that_is_not_an_object_closes_with_4102(gateway, mint, frame):
    # Packing is server -> client only: a client's array is not a message either.
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice"))
    await client.ws.send(frame)
    assert await client.closed() == CloseCode.PROTOCOL_ERROR
    await still_serving(gw, mint, observer)


async def test_msgpack_that_is_not_a_map_closes_with_4102(gateway, mint):
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice"), msgpack=True)
    await client.ws.send(msgspec.msgpack.encode([1, 2, 3]))
    assert await client.closed() == CloseCode.PROTOCOL_ERROR
    await still_serving(gw, mint, observer)


@pytest.mark.parametrize("msgpack", [False, True])
async def test_unknown_op_is_answered_and_the_connection_stays_open(gateway, mint, msgpack):
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice"), msgpack=msgpack)
    await client.roundtrip({"op": "frobnicate", "id": 3}, "error", code="unknown_op")
    await client.send({"op": "welcome", "cid": "x", "node": "y"})  # a server op is not a client op
    await client.expect("error", code="unknown_op")
    await client.roundtrip({"op": "ping", "id": 4}, "pong")
    assert gw.node.metrics.bad_requests == 2
    await still_serving(gw, mint, observer)


@pytest.mark.parametrize(
    "message",
    [
        {"op": "sub", "id": 4},
        {"op": "sub", "id": 5, "topic": 7},
        {"op": "sub", "id": 6, "topic": ""},
        {"op": "unsub", "id": 7, "topic": ["a"]},
        {"op": "call", "id": 8, "method": "orders.create", "timeout": -1},
        {"op": "pub", "id": 9, "data": 1},
        {"op": "reply", "id": 10, "error": {"message": "no code"}},
        {"op": "ping", "id": 11, "extra": "ignored?", "more": [1]},
        {"op": "pub", "id": 12, "topic": "news", "bin": "not base64!"},
        {"op": "sub", "id": 2**53, "topic": "news"},
    ],
)
async def test_bad_fields_get_bad_request_with_the_id(gateway, mint, message):
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice", subscribe=[">"], call=[">"]))
    await client.send(message)
    answer = await client.recv()
    if message["op"] == "ping":  # unknown fields are ignored (forward compatibility)
        assert answer == {"op": "pong", "id": 11}
    elif message["id"] > 2**53 - 1:  # out of range: the id cannot be echoed
        assert answer["op"] == "error" and answer["code"] == "bad_request"
        assert "id" not in answer
    else:
        assert answer["op"] == "error" and answer["code"] == "bad_request", answer
        assert answer["id"] == message["id"]
    await client.roundtrip({"op": "ping", "id": 99}, "pong")
    await still_serving(gw, mint, observer)


async def test_bad_fields_without_an_id(gateway, mint):
    gw, observer = await start(gateway, mint)
    client = await gw.connect(mint(user="alice"))
    await client.send({"op": "pub", "topic": 5})
    answer = await client.expect("error", code="bad_request")
    assert "id" not in answer
    await still_serving(gw, mint, observer)


async def test_oversized_message_in_one_frame_closes_with_1009(gateway, mint):
    gw, observer = await start(gateway, mint, max_message_size=1024)
    client = await gw.connect(mint(user="alice"))
    await client.roundtrip({"op": "ping", "id": 1, "pad": "x" * 900}, "pong")  # under the limit

    await client.ws.send('{"op": "ping", "pad": "' + "x" * 2000 + '"}')
    assert await client.closed() == CloseCode.MESSAGE_TOO_BIG
    await eventually(lambda: gw.node.metrics.oversized_messages == 1, what="counted")
    await still_serving(gw, mint, observer)


async def test_oversized_fragmented_message_closes_with_1009(gateway, mint):
    gw, observer = await start(gateway, mint, max_message_size=1024)
    client = await gw.connect(mint(user="alice"))
    # Fragments under the limit that reassemble to a message under the limit are fine...
    await client.ws.send(iter(['{"op": "ping", ', '"id": 1, ', '"pad": "' + "y" * 500 + '"}']))
    await client.expect("pong", id=1)

    # ... but not when the whole message goes over it, though each fragment is small.
    await client.ws.send(iter(['{"op": "ping", "pad": "'] + ["z" * 400] * 4 + ['"}']))
    assert await client.closed() == CloseCode.MESSAGE_TOO_BIG
    await eventually(lambda: gw.node.metrics.oversized_messages == 1, what="counted")
    await still_serving(gw, mint, observer)


async def test_rate_limit_breach_closes_with_4004(gateway, mint):
    gw, observer = await start(gateway, mint, rate_limit=5.0, rate_burst=5)
    client = await gw.connect(mint(user="alice"))
    for n in range(30):
        await client.send({"op": "ping", "id": n})
    assert await client.closed() == CloseCode.RATE_LIMITED
    assert gw.node.metrics.rate_limited == 1
    assert gw.node.metrics.messages_received <= 5
    await still_serving(gw, mint, observer)


async def test_slow_consumer_is_closed_and_others_get_every_message(gateway, mint):
    gw, observer = await start(gateway, mint, max_queue_bytes=64 * 1024)
    token = mint(user="sloth", subscribe=["news.>"], channels=["news.>"])
    sloth = await RawClient.connect(gw.url, token, rcvbuf=4096)
    try:
        welcome = await sloth.expect("welcome")  # and then never read again
        pad = "x" * 60_000
        sent = 0
        while gw.node.metrics.slow_consumers == 0:
            assert sent < 2000, "the slow consumer was never detected"
            await gw.node.publish("news.flood", {"n": sent, "pad": pad})
            # The observer keeps up: it takes each message before the next is published.
            message = await observer.expect("msg", topic="news.flood")
            assert message["data"]["n"] == sent
            sent += 1
        assert gw.node.metrics.slow_consumers == 1
        # It cannot read its close frame: it is dropped after a grace second (and a sweep).
        await eventually(
            lambda: gw.node.hub.get(welcome["cid"]) is None, timeout=4, what="sloth gone"
        )
        await still_serving(gw, mint, observer)
    finally:
        await sloth.close()
