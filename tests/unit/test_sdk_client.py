"""The client SDK's pure parts: backoff, close verdicts, frame decoding, inboxes."""

from __future__ import annotations

import asyncio
import random

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Response

from wsgate.errors import ConnectionClosed
from wsgate.protocol.codec import JSON, MSGPACK
from wsgate.protocol.messages import Msg, Ok, Push
from wsgate.sdk.connection import backoff_delay, closed_by, decode_frame
from wsgate.sdk.subscription import Inbox


def test_backoff_is_full_jitter_below_the_capped_exponential():
    rng = random.Random(7)
    for attempt in range(80):
        ceiling = min(3.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 3.0, rng) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread out


def closed_with(code: int, reason: str = "") -> WsConnectionClosed:
    return WsConnectionClosed(Close(code, reason), None)


@pytest.mark.parametrize(
    ("exc", "code", "retry"),
    [
        (closed_with(4000, "slow consumer"), 4000, True),
        (closed_with(4001), 4001, True),
        (closed_with(1011), 1011, True),
        (closed_with(1000), 1000, False),
        (closed_with(1002), 1002, False),
        (closed_with(4100, "invalid signature"), 4100, False),
        (closed_with(4103), 4103, False),
        (closed_with(4500, "banned"), 4500, False),
        (WsConnectionClosed(None, None), 1006, True),
        (ConnectionRefusedError(111, "refused"), 1006, True),
        (TimeoutError(), 1006, True),
        (InvalidStatus(Response(503, "Service Unavailable", Headers())), 1006, True),
        (InvalidStatus(Response(403, "Forbidden", Headers())), 1006, False),
        (InvalidURI("http://x", "not a ws URI"), 1006, False),
    ],
)
def test_closed_by_follows_the_close_code_classes(exc, code, retry):
    closed, again = closed_by(exc)
    assert isinstance(closed, ConnectionClosed)
    assert (closed.code, again) == (code, retry)
    assert closed.__cause__ is exc


def test_closed_by_keeps_the_reason():
    closed, _ = closed_by(closed_with(4500, "banned"))
    assert closed.reason == "banned" and "4500" in str(closed) and "banned" in str(closed)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_decode_frame_skips_unknown_ops_but_keeps_the_rest(codec):
    known = [Msg("a.b", data=1), Ok(3), Push(bin=b"\x00")]
    encoded = [codec.encode(m) for m in known]
    unknown = codec.encode_value({"op": "future", "x": 1})
    packed = codec.pack([encoded[0], unknown, encoded[1], encoded[2]])
    assert decode_frame(codec, packed) == known
    assert decode_frame(codec, unknown) == []
    assert decode_frame(codec, b"\xc1 not a message") == []


def test_decode_frame_accepts_text():
    assert decode_frame(JSON, '{"op":"ok","id":1}') == [Ok(1)]


async def test_inbox_drops_the_oldest_when_full_and_ends_once():
    inbox: Inbox[int] = Inbox(2)
    for item in range(4):
        inbox.put(item)
    assert inbox.dropped == 2
    error = ConnectionClosed(4500, "banned")
    inbox.end(error)
    inbox.put(99)  # ignored once ended
    assert [await anext(inbox), await anext(inbox)] == [2, 3]
    with pytest.raises(ConnectionClosed):
        await anext(inbox)
    with pytest.raises(StopAsyncIteration):
        await anext(inbox)


async def test_inbox_wait_can_be_cancelled_without_losing_an_item():
    inbox: Inbox[str] = Inbox(4)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await anext(inbox)
    inbox.put("kept")
    assert await anext(inbox) == "kept"
    inbox.end(discard=True)
    assert [item async for item in inbox] == []
