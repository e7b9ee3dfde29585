"""The close and error code catalogue.

Close codes (WebSocket close frames, RFC 6455 section 7.4) fall in three ranges
that a client's reconnect policy reads:

============  ===========  ======================================================
range         class        client behaviour
============  ===========  ======================================================
1000-3999     standard     1001/1006/1011/1012/1013/1014 reconnect;
                           every other code (1000 included) is terminal
4000-4099     reconnect    transient: reconnect with backoff (and jitter)
4100-4499     terminal     do not reconnect until something changes (token, code)
4500-4999     application  chosen by backends in ``disconnect(code=...)``;
                           the client SDK does not reconnect by default
============  ===========  ======================================================

Error codes travel inside ``error`` frames (answers to a client's message) and
never close the connection by themselves.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "CloseCode",
    "ErrorCode",
    "is_application",
    "is_reconnectable",
    "is_sendable",
    "is_terminal",
]


class CloseCode(IntEnum):
    """Every close code the server sends."""

    # -- standard (RFC 6455) -------------------------------------------------------
    NORMAL = 1000
    """The client or server finished cleanly."""
    GOING_AWAY = 1001
    """Standard 'going away'; treated as reconnectable."""
    FRAMING_ERROR = 1002
    """The WebSocket framing itself was invalid (RFC 6455 protocol error)."""
    MESSAGE_TOO_BIG = 1009
    """A message exceeded the configured maximum size (RFC 6455 'message too big')."""
    INTERNAL_ERROR = 1011
    """An unexpected server error; reconnectable."""

    # -- 4000-4099: reconnect ----------------------------------------------------
    SLOW_CONSUMER = 4000
    """The client did not read fast enough; its outbound queue overflowed."""
    SHUTDOWN = 4001
    """The node is shutting down or restarting; reconnect (to another node)."""
    KEEPALIVE_TIMEOUT = 4002
    """After a server ping, no frame at all (pong or other) arrived within the pong timeout."""
    TOKEN_EXPIRED = 4003
    """The token expired on a live connection; reconnect with a fresh token."""
    RATE_LIMITED = 4004
    """The client sent messages faster than its rate limit allows."""
    AUTH_TIMEOUT = 4005
    """Authentication did not succeed within the handshake timeout (counted from the upgrade)."""

    # -- 4100-4499: terminal -------------------------------------------------------
    AUTH_FAILED = 4100
    """The credentials were missing, malformed, badly signed or rejected."""
    FORBIDDEN = 4101
    """The authenticator recognised the client but refused it (a custom
    authenticator raised ``PermissionDenied``)."""
    PROTOCOL_ERROR = 4102
    """A frame did not decode to a message (bad JSON/MessagePack, not a map)."""
    TAKEN_OVER = 4103
    """A newer connection claimed the same connection id."""
    DISCONNECTED = 4104
    """A backend disconnected this connection without giving a code."""


class ErrorCode(StrEnum):
    """Codes carried by ``error`` frames, answering one client message."""

    BAD_REQUEST = "bad_request"
    """The message has a known op but invalid fields."""
    UNKNOWN_OP = "unknown_op"
    """The op is not part of this protocol version."""
    PERMISSION_DENIED = "permission_denied"
    """The token does not grant this topic or method."""
    INVALID_TOPIC = "invalid_topic"
    """The topic or pattern is not well formed."""
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    """The per-connection subscription cap is reached."""
    NOT_SUBSCRIBED = "not_subscribed"
    """Unsubscribe from a pattern the connection does not hold."""
    UNKNOWN_METHOD = "unknown_method"
    """No handler or worker serves this method."""
    METHOD_ERROR = "method_error"
    """The handler raised an unexpected exception (details are logged, not sent;
    a handler picks its own code and message by raising ``RemoteError``)."""
    TIMEOUT = "timeout"
    """The handler did not answer within the call timeout."""
    TOO_MANY_CALLS = "too_many_calls"
    """The connection already has ``max_inflight_calls`` calls awaiting answers."""
    AUTH_FAILED = "auth_failed"
    """Re-authentication on an open connection failed; the old identity stays."""
    INTERNAL = "internal"
    """An unexpected server error while handling this message."""


_RECONNECT_STANDARD = frozenset({1001, 1006, 1011, 1012, 1013, 1014})


def is_reconnectable(code: int) -> bool:
    """True when a client should reconnect (with backoff) after this close code."""
    return code in _RECONNECT_STANDARD or 4000 <= code <= 4099


def is_terminal(code: int) -> bool:
    """True when reconnecting with the same credentials and request is pointless.

    Every code that is neither reconnectable nor in the application range is
    terminal, including ``1000`` (the server ended the connection on purpose) and
    codes other servers use in 3000-3999.
    """
    return not is_reconnectable(code) and not is_application(code)


def is_application(code: int) -> bool:
    """True for codes reserved to backends (``disconnect(code=...)``)."""
    return 4500 <= code <= 4999


# RFC 6455 section 7.4: 1004 is reserved, 1005, 1006 and 1015 must never be sent,
# and 1016-2999 belong to future revisions of the protocol.
_SENDABLE_STANDARD = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def is_sendable(code: int) -> bool:
    """True when a close frame may carry this code (peers fail the connection otherwise)."""
    return code in _SENDABLE_STANDARD or 3000 <= code <= 4999
