"""MessagePack end to end: raw bytes in ``bin`` (no base64) in every direction."""

from __future__ import annotations

import asyncio
import base64

import wsgate

from ._client import scaled

BLOB = bytes(range(256)) * 3 + b"\x00\xff"
"""Every byte value, including ones that are not valid UTF-8."""


async def test_pub_and_msg_carry_raw_bytes(gw, mint):
    token = mint(user="u", subscribe=["files.>"], publish=["files.>"], channels=["files.>"])
    publisher = await gw.connect(token, msgpack=True)
    packed = await gw.connect(token, msgpack=True)
    text = await gw.connect(token)

    await publisher.send({"op": "pub", "id": 1, "topic": "files.up", "bin": BLOB})
    for client in (publisher, packed):
        message = await client.expect("msg", topic="files.up")
        assert type(message["bin"]) is bytes and message["bin"] == BLOB
        assert "data" not in message
    await publisher.expect("ok", id=1)  # after the fan-out, which includes the publisher
    # The same publication reaches a JSON client as base64.
    message = await text.expect("msg", topic="files.up")
    assert base64.b64decode(message["bin"]) == BLOB

    # And a JSON publisher's base64 arrives as raw bytes on MessagePack.
    await text.send(
        {"op": "pub", "id": 2, "topic": "files.b64", "bin": base64.b64encode(b"\x01\x02").decode()}
    )
    await packed.expect("msg", topic="files.b64", bin=b"\x01\x02")
    await text.expect("msg", topic="files.b64", bin="AQI=")
    await text.expect("ok", id=2)

    await gw.node.publish("files.backend", BLOB)
    await packed.expect("msg", topic="files.backend", bin=BLOB)


async def test_structured_data_round_trips(gw, mint):
    client = await gw.connect(mint(user="u"), msgpack=True)
    data = {"int": 2**40, "float": 2.5, "none": None, "bool": True, "list": [1, "two", [3]]}
    assert await gw.node.send(client.cid, data) is True
    await client.expect("push", data=data)


async def test_send_push_carries_raw_bytes(gw, mint):
    client = await gw.connect(mint(user="u"), msgpack=True)
    assert await gw.node.send(client.cid, BLOB) is True
    message = await client.expect("push")
    assert type(message["bin"]) is bytes and message["bin"] == BLOB

    assert await gw.node.send_to_user("u", bytearray(b"\xfe\xed")) == 1
    await client.expect("push", bin=b"\xfe\xed")


async def test_request_and_reply_carry_raw_bytes(gw, mint):
    client = await gw.connect(mint(user="u"), msgpack=True)
    task = asyncio.create_task(gw.node.request(client.cid, BLOB, timeout=scaled(5)))
    req = await client.expect("req")
    assert type(req["bin"]) is bytes and req["bin"] == BLOB

    await client.send({"op": "reply", "id": req["id"], "bin": BLOB[::-1]})
    result = await task
    assert type(result) is bytes and result == BLOB[::-1]


async def test_call_carries_raw_bytes(gw, mint):
    @gw.node.method("blob.reverse")
    async def reverse(ctx: wsgate.CallContext) -> bytes:
        assert isinstance(ctx.data, bytes)
        return ctx.data[::-1]

    client = await gw.connect(mint(user="u", call=["blob.*"]), msgpack=True)
    answer = await client.roundtrip({"op": "call", "id": 1, "method": "blob.reverse", "bin": BLOB})
    assert answer["bin"] == BLOB[::-1]
