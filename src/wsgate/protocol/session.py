"""The per-connection protocol state machine (server side), without I/O.

Rules this file keeps:

1. A connection starts in ``AUTHENTICATING``; the only message it may send is
   ``auth`` (unless its token came with the HTTP upgrade, in which case the
   server authenticates it without any message).
2. In ``OPEN``, every client op is accepted; ``auth`` then re-authenticates
   (token refresh, or anonymous to user), which the node checks.
3. Every inbound message is checked, in this order, for size, rate, encoding
   and state; the first failure decides the outcome.
4. Every error becomes an outcome here and nowhere else: :class:`Close` (the
   connection must close with a catalogued code) or :class:`Reject` (answer
   with an ``error`` frame and carry on).

=================  ===================  ======================================
failure            outcome              code
=================  ===================  ======================================
too big            Close                1009 MESSAGE_TOO_BIG
over rate          Close                4004 RATE_LIMITED
not a message      Close                4102 PROTOCOL_ERROR
unknown op         Reject               ``unknown_op``
bad fields         Reject               ``bad_request``
not authenticated  Close                4100 AUTH_FAILED
token expired      Close                4003 TOKEN_EXPIRED
auth failed        Close                4100 AUTH_FAILED
not allowed        Close                4101 FORBIDDEN
=================  ===================  ======================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wsgate.errors import (
    AuthError,
    InvalidMessage,
    MalformedMessage,
    PermissionDenied,
    ProtocolError,
    TokenExpired,
    UnknownOp,
)
from wsgate.protocol.codec import Codec
from wsgate.protocol.codes import CloseCode, ErrorCode
from wsgate.protocol.messages import Auth, ClientMessage, Error

__all__ = ["Close", "Received", "Reject", "ServerSession", "State", "close_for_auth_error"]


class State(Enum):
    """Where a connection is in its life."""

    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Received:
    """A valid message to act on."""

    message: ClientMessage


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer with this error frame; the connection stays open."""

    error: Error


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code; ``reason`` is safe to show the client."""

    code: CloseCode
    reason: str


Outcome = Received | Reject | Close


def close_for_auth_error(exc: AuthError) -> Close:
    """The close that answers a failed authentication (the message is safe to show)."""
    if isinstance(exc, TokenExpired):
        return Close(CloseCode.TOKEN_EXPIRED, "token expired")
    if isinstance(exc, PermissionDenied):
        return Close(CloseCode.FORBIDDEN, str(exc)[:120])
    return Close(CloseCode.AUTH_FAILED, str(exc)[:120])


def _outcome_for(exc: ProtocolError) -> Outcome:
    """Map a decoding error to its outcome (the one place this is decided)."""
    if isinstance(exc, MalformedMessage):
        return Close(CloseCode.PROTOCOL_ERROR, str(exc)[:120])
    if isinstance(exc, UnknownOp):
        return Reject(Error(code=ErrorCode.UNKNOWN_OP, message=str(exc), id=exc.request_id))
    if isinstance(exc, InvalidMessage):
        return Reject(Error(code=ErrorCode.BAD_REQUEST, message=str(exc)[:200], id=exc.request_id))
    return Close(CloseCode.PROTOCOL_ERROR, "protocol error")  # pragma: no cover


class ServerSession:
    """Checks and decodes what one client sends.

    Args:
        codec: the negotiated encoding.
        max_message_size: largest accepted message in bytes.
        rate_limit: sustained messages per second.
        rate_burst: messages allowed at once (token bucket size).
    """

    __slots__ = ("_allowance", "_burst", "_last", "_max_size", "_rate", "codec", "state")

    def __init__(
        self, codec: Codec, *, max_message_size: int, rate_limit: float, rate_burst: int
    ) -> None:
        self.codec = codec
        self.state = State.AUTHENTICATING
        self._max_size = max_message_size
        self._rate = rate_limit
        self._burst = float(rate_burst)
        self._allowance = float(rate_burst)
        self._last: float | None = None

    def check_size(self, size: int) -> Close | None:
        """Check a (possibly partial) message size before buffering more of it."""
        if size > self._max_size:
            return Close(CloseCode.MESSAGE_TOO_BIG, f"message exceeds {self._max_size} bytes")
        return None

    def receive(self, payload: bytes, now: float) -> Outcome | None:
        """Check and decode one complete inbound message.

        Args:
            payload: the message bytes (a whole WebSocket message).
            now: a monotonic clock reading, for the rate limit.

        Returns:
            What to do with it, or None once the session is closed (ignore input).
        """
        if self.state is State.CLOSED:
            return None
        too_big = self.check_size(len(payload))
        if too_big is not None:
            return too_big
        # Token bucket: refill at `rate` per second up to `burst`, spend one per message.
        if self._last is not None:
            self._allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance < 1.0:
            return Close(CloseCode.RATE_LIMITED, "message rate limit exceeded")
        self._allowance -= 1.0
        try:
            message = self.codec.decode_client(payload)
        except ProtocolError as exc:
            return _outcome_for(exc)
        if self.state is State.AUTHENTICATING:
            if isinstance(message, Auth):
                return Received(message)
            return Close(CloseCode.AUTH_FAILED, "authenticate first")
        return Received(message)

    def opened(self) -> None:
        """Authentication succeeded."""
        if self.state is State.AUTHENTICATING:
            self.state = State.OPEN

    def closed(self) -> None:
        """The connection is closing; further input is ignored."""
        self.state = State.CLOSED
