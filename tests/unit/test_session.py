"""The sans-I/O session: order of checks, state table, rate limit, error mapping."""

from __future__ import annotations

import pytest

from wsgate.errors import AuthError, PermissionDenied, TokenExpired
from wsgate.protocol.codec import JSON, MSGPACK, Codec
from wsgate.protocol.codes import (
    CloseCode,
    ErrorCode,
    is_application,
    is_reconnectable,
    is_terminal,
)
from wsgate.protocol.messages import Auth, Ping, Sub
from wsgate.protocol.session import (
    Close,
    Received,
    Reject,
    ServerSession,
    State,
    close_for_auth_error,
)


def _session(codec: Codec = JSON, **limits: float) -> ServerSession:
    args = {"max_message_size": 1024, "rate_limit": 10.0, "rate_burst": 5} | limits
    return ServerSession(
        codec,
        max_message_size=int(args["max_message_size"]),
        rate_limit=float(args["rate_limit"]),
        rate_burst=int(args["rate_burst"]),
    )


def _open(codec: Codec = JSON, **limits: float) -> ServerSession:
    session = _session(codec, **limits)
    session.opened()
    return session


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_only_auth_is_accepted_before_authentication(codec: Codec) -> None:
    session = _session(codec)
    assert session.receive(codec.encode(Auth(token="t")), 0.0) == Received(Auth(token="t"))
    assert session.receive(codec.encode(Sub(id=1, topic="a")), 0.0) == Close(
        CloseCode.AUTH_FAILED, "authenticate first"
    )


def test_auth_on_an_open_session_is_received_for_reauthentication() -> None:
    session = _open()
    outcome = session.receive(JSON.encode(Auth(token="t", id=4)), 0.0)
    assert outcome == Received(Auth(token="t", id=4))
    assert session.state is State.OPEN


def test_open_session_accepts_client_messages() -> None:
    session = _open()
    assert session.receive(b'{"op":"sub","id":1,"topic":"a.*"}', 0.0) == Received(
        Sub(id=1, topic="a.*")
    )
    assert session.receive(b'{"op":"ping"}', 0.0) == Received(Ping())


def test_size_is_checked_first() -> None:
    session = _open(max_message_size=64)
    assert session.receive(b"x" * 65, 0.0) == Close(
        CloseCode.MESSAGE_TOO_BIG, "message exceeds 64 bytes"
    )
    assert session.check_size(64) is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"nope", Close(CloseCode.PROTOCOL_ERROR, "not valid json")),
        (b"[1]", Close(CloseCode.PROTOCOL_ERROR, "a message must be a map")),
    ],
)
def test_malformed_input_closes(payload: bytes, expected: Close) -> None:
    assert _open().receive(payload, 0.0) == expected


def test_unknown_op_and_bad_fields_are_rejected_with_the_id() -> None:
    session = _open()
    unknown = session.receive(b'{"op":"teleport","id":9}', 0.0)
    assert isinstance(unknown, Reject)
    assert (unknown.error.code, unknown.error.id) == (ErrorCode.UNKNOWN_OP, 9)
    bad = session.receive(b'{"op":"sub","id":8}', 0.0)
    assert isinstance(bad, Reject)
    assert (bad.error.code, bad.error.id) == (ErrorCode.BAD_REQUEST, 8)
    assert session.state is State.OPEN


def test_rate_limit_allows_the_burst_then_the_rate() -> None:
    session = _open(rate_limit=10.0, rate_burst=3)
    ping = b'{"op":"ping"}'
    assert all(isinstance(session.receive(ping, 0.0), Received) for _ in range(3))
    assert session.receive(ping, 0.0) == Close(
        CloseCode.RATE_LIMITED, "message rate limit exceeded"
    )
    session = _open(rate_limit=10.0, rate_burst=3)
    # At exactly the sustained rate (one per 0.1 s) a client is never limited.
    assert all(isinstance(session.receive(ping, i * 0.1), Received) for i in range(100))


def test_closed_session_ignores_input() -> None:
    session = _open()
    session.closed()
    assert session.receive(b"garbage", 0.0) is None


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TokenExpired("token expired"), CloseCode.TOKEN_EXPIRED),
        (PermissionDenied("cid not allowed"), CloseCode.FORBIDDEN),
        (AuthError("invalid signature"), CloseCode.AUTH_FAILED),
    ],
)
def test_auth_errors_map_to_close_codes(error: AuthError, code: CloseCode) -> None:
    assert close_for_auth_error(error).code == code


def test_every_close_code_has_exactly_one_class() -> None:
    for code in range(1000, 5000):
        classes = [is_reconnectable(code), is_terminal(code), is_application(code)]
        assert classes.count(True) == 1, code
    assert is_reconnectable(CloseCode.SLOW_CONSUMER) and is_reconnectable(CloseCode.SHUTDOWN)
    assert is_terminal(CloseCode.AUTH_FAILED) and is_terminal(CloseCode.MESSAGE_TOO_BIG)
    assert is_terminal(CloseCode.NORMAL) and is_application(4500)
