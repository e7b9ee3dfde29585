"""Codecs: round trips, classification of bad input, packing (property-based)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.errors import InvalidMessage, MalformedMessage, ProtocolError, UnknownOp
from wsgate.protocol.codec import CODECS, DEFAULT_CODEC, JSON, MSGPACK, Codec, codec_for_subprotocol
from wsgate.protocol.messages import (
    MAX_ID,
    Auth,
    Call,
    Error,
    ErrorInfo,
    Msg,
    Ok,
    Ping,
    Pong,
    Pub,
    Push,
    Reply,
    Req,
    Sub,
    Unsub,
    Welcome,
    payload_fields,
    payload_of,
)

ids = st.integers(min_value=0, max_value=MAX_ID)
names = st.text(min_size=1, max_size=40).filter(lambda s: len(s) <= 255)
# JSON-compatible values that survive a round trip through both encodings unchanged.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
binaries = st.none() | st.binary(max_size=64)

client_messages = st.one_of(
    st.builds(Auth, token=st.text(max_size=100)),
    st.builds(Sub, id=ids, topic=names),
    st.builds(Unsub, id=ids, topic=names),
    st.builds(Pub, topic=names, data=json_values, bin=binaries, id=st.none() | ids),
    st.builds(
        Call,
        id=ids,
        method=names,
        data=json_values,
        bin=binaries,
        timeout=st.none() | st.floats(min_value=0.001, max_value=300),
    ),
    st.builds(
        Reply,
        id=ids,
        data=json_values,
        bin=binaries,
        error=st.none() | st.builds(ErrorInfo, code=names, message=st.text(max_size=20)),
    ),
    st.builds(Ping, id=st.none() | ids),
)
server_messages = st.one_of(
    st.builds(
        Welcome,
        cid=st.text(max_size=20),
        node=st.text(max_size=20),
        user=st.none() | st.text(max_size=20),
        subs=st.lists(st.text(max_size=10), max_size=3).map(tuple),
        ping_interval=st.none() | st.floats(min_value=0.1, max_value=100),
    ),
    st.builds(Msg, topic=st.text(max_size=20), data=json_values, bin=binaries),
    st.builds(Push, data=json_values, bin=binaries),
    st.builds(Req, id=ids, data=json_values, bin=binaries),
    st.builds(Ok, id=ids, data=json_values, bin=binaries),
    st.builds(
        Error,
        code=st.text(min_size=1, max_size=20),
        message=st.text(max_size=20),
        id=st.none() | ids,
    ),
    st.builds(Pong, id=st.none() | ids),
)
codecs = st.sampled_from(CODECS)


def _normal(message: Any) -> Any:
    """Messages compare equal after a round trip except that None data is omitted."""
    return msgspec.structs.asdict(message)


@given(codec=codecs, message=client_messages)
@settings(max_examples=300)
def test_client_messages_round_trip(codec: Codec, message: Any) -> None:
    assert _normal(codec.decode_client(codec.encode(message))) == _normal(message)


@given(codec=codecs, message=server_messages)
@settings(max_examples=300)
def test_server_messages_round_trip(codec: Codec, message: Any) -> None:
    assert [_normal(m) for m in codec.decode_server(codec.encode(message))] == [_normal(message)]


@given(codec=codecs, batch=st.lists(server_messages, min_size=1, max_size=40))
@settings(max_examples=100)
def test_packed_frames_decode_to_the_same_messages_in_order(codec: Codec, batch: list[Any]) -> None:
    packed = codec.pack([codec.encode(m) for m in batch])
    assert [_normal(m) for m in codec.decode_server(packed)] == [_normal(m) for m in batch]


def test_msgpack_packing_uses_the_array16_header_beyond_15_messages() -> None:
    batch = [MSGPACK.encode(Pong(id=i)) for i in range(70_000)]
    assert len(MSGPACK.decode_server(MSGPACK.pack(batch))) == 70_000
    assert MSGPACK.pack(batch[:16])[0] == 0xDC


@given(codec=codecs, payload=st.binary(max_size=256))
@settings(max_examples=500)
def test_arbitrary_bytes_give_a_message_or_a_protocol_error(codec: Codec, payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode_client(payload)
    with contextlib.suppress(ProtocolError):
        codec.decode_server(payload)


@given(codec=codecs, value=json_values)
@settings(max_examples=200)
def test_arbitrary_valid_documents_give_a_message_or_a_protocol_error(
    codec: Codec, value: Any
) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode_client(codec.encode_value(value))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_deeply_nested_input_is_malformed_not_a_crash(codec: Codec) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    payload = deep.encode() if codec is JSON else b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        codec.decode_client(payload)


def _encode(codec: Codec, value: Any) -> bytes:
    return codec.encode_value(value)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("value", "error", "request_id"),
    [
        ([1, 2], MalformedMessage, None),
        ("text", MalformedMessage, None),
        ({"id": 3}, InvalidMessage, 3),
        ({"op": 7, "id": 3}, InvalidMessage, 3),
        ({"op": "nope", "id": 4}, UnknownOp, 4),
        ({"op": "nope", "id": -1}, UnknownOp, None),
        ({"op": "nope", "id": True}, UnknownOp, None),
        ({"op": "sub", "id": 5}, InvalidMessage, 5),
        ({"op": "sub", "id": 5, "topic": ""}, InvalidMessage, 5),
        ({"op": "sub", "id": MAX_ID + 1, "topic": "a"}, InvalidMessage, None),
        ({"op": "call", "id": 6, "method": "m", "timeout": 0}, InvalidMessage, 6),
        ({"op": "msg", "topic": "a"}, UnknownOp, None),  # a server op sent by a client
    ],
)
def test_bad_client_messages_are_classified(
    codec: Codec, value: Any, error: type[ProtocolError], request_id: int | None
) -> None:
    with pytest.raises(error) as caught:
        codec.decode_client(_encode(codec, value))
    assert type(caught.value) is error
    assert caught.value.request_id == request_id


def test_not_json_is_malformed() -> None:
    for payload in (b"", b"{", b"\xff\xfe", b'{"op": "sub"'):
        with pytest.raises(MalformedMessage):
            JSON.decode_client(payload)


def test_json_bin_is_base64_and_msgpack_bin_is_raw() -> None:
    raw = bytes(range(256))
    assert json.loads(JSON.encode(Push(bin=raw)))["bin"] != raw.decode("latin-1")
    assert raw in MSGPACK.encode(Push(bin=raw))
    assert JSON.decode_server(JSON.encode(Push(bin=raw)))[0] == Push(bin=raw)


def test_ops_and_defaults_on_the_wire() -> None:
    assert json.loads(JSON.encode(Sub(id=1, topic="a.b"))) == {"op": "sub", "id": 1, "topic": "a.b"}
    assert json.loads(JSON.encode(Ok(id=2))) == {"op": "ok", "id": 2}
    assert JSON.encode(Msg(topic="t", data={"x": 1})).startswith(b'{"op":"msg"')


def test_encoding_an_unsupported_payload_is_a_type_error() -> None:
    for codec in CODECS:
        with pytest.raises(TypeError):
            codec.encode(Push(data=object()))


def test_payload_fields_split_bytes_from_values() -> None:
    assert payload_fields(b"x") == (None, b"x")
    assert payload_fields(bytearray(b"x")) == (None, b"x")
    assert payload_fields(memoryview(b"x")) == (None, b"x")
    assert payload_fields({"a": 1}) == ({"a": 1}, None)
    assert payload_of(Push(bin=b"x", data=1)) == b"x"
    assert payload_of(Push(data=1)) == 1


def test_subprotocol_negotiation() -> None:
    assert codec_for_subprotocol([]) is DEFAULT_CODEC is JSON
    assert codec_for_subprotocol(["wsgate.v1.msgpack", "wsgate.v1.json"]) is MSGPACK
    assert codec_for_subprotocol(["chat", " wsgate.v1.json"]) is JSON
    assert codec_for_subprotocol(["wsgate.v2.json"]) is None
