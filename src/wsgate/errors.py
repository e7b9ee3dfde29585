"""The one exception tree of wsgate.

Subclasses say who is at fault::

    WsgateError
    ├── ConfigError              the operator's configuration is unusable
    ├── InvalidState             the caller misused the API (wrong state, bad argument)
    │   └── InvalidTopic         a topic or pattern that is not well formed
    ├── ProtocolError            the peer sent something the protocol forbids
    │   ├── MalformedMessage     bytes that are not a message at all
    │   ├── InvalidMessage       a message with a known op but bad fields
    │   └── UnknownOp            a well-formed message whose op we do not know
    ├── AuthError                credentials missing, invalid, expired or not allowed
    │   ├── TokenExpired         the token's ``exp`` has passed
    │   └── PermissionDenied     authenticated, but this action is not granted
    ├── DeliveryError            a backend verb could not be completed
    │   ├── NotConnected         no live connection has that id
    │   ├── RequestTimeout       the peer did not answer in time
    │   ├── RemoteError          the peer answered with an error
    │   └── ConnectionLost       the connection went away while a request was in flight
    ├── BrokerError              the broker failed (``temporary`` says whether to retry)
    └── ConnectionClosed         (client SDK) the gateway closed and the client will not reconnect

Protocol and auth errors carry the close or error code they map to; that mapping
happens in exactly one place, :mod:`wsgate.protocol.session`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BrokerError",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionLost",
    "DeliveryError",
    "InvalidMessage",
    "InvalidState",
    "InvalidTopic",
    "MalformedMessage",
    "NotConnected",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "TokenExpired",
    "UnknownOp",
    "WsgateError",
]


class WsgateError(Exception):
    """Root of every exception wsgate raises on purpose."""


class ConfigError(WsgateError):
    """The configuration is invalid or incomplete."""


class InvalidState(WsgateError):
    """The API was used in a state or with arguments that do not allow it."""


class InvalidTopic(InvalidState, ValueError):
    """A topic or pattern is not well formed (see :mod:`wsgate.topics` for the rules)."""


class ProtocolError(WsgateError):
    """The peer broke the wire protocol.

    Attributes:
        request_id: the ``id`` of the offending message when one could be read,
            so the error can be answered instead of closing the connection.
    """

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class MalformedMessage(ProtocolError):
    """The frame does not decode to a message object (bad JSON/MessagePack, not a map)."""


class InvalidMessage(ProtocolError):
    """The op is known but a field is missing, of the wrong type, or out of range."""


class UnknownOp(ProtocolError):
    """The message names an op this protocol version does not define."""

    def __init__(self, op: str, request_id: int | None = None) -> None:
        super().__init__(f"unknown op {op!r}", request_id)
        self.op = op


class AuthError(WsgateError):
    """Authentication failed. The message is safe to log; it never holds the credential."""


class TokenExpired(AuthError):
    """The token has expired (at the door, or later on a live connection)."""


class PermissionDenied(AuthError):
    """The identity is known but not allowed to do this."""


class DeliveryError(WsgateError):
    """A backend verb addressed to a connection could not be completed."""


class NotConnected(DeliveryError):
    """No live connection has the given id (or the user has no connection)."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(f"connection {connection_id!r} is not connected")
        self.connection_id = connection_id


class RequestTimeout(DeliveryError):
    """The connection did not reply within the timeout."""

    def __init__(self, connection_id: str, timeout: float) -> None:
        super().__init__(f"connection {connection_id!r} did not reply within {timeout:g} s")
        self.connection_id = connection_id
        self.timeout = timeout


class RemoteError(DeliveryError):
    """The peer answered the request (or call) with an error.

    Attributes:
        code: the error code the peer sent (free-form string, e.g. ``"invalid_input"``).
        data: optional structured details the peer attached.
    """

    def __init__(self, code: str, message: str = "", data: Any = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.remote_message = message
        self.data = data


class ConnectionLost(DeliveryError):
    """The connection closed while the request was waiting for its reply."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(f"connection {connection_id!r} closed before replying")
        self.connection_id = connection_id


class BrokerError(WsgateError):
    """The broker failed.

    Attributes:
        temporary: True when retrying later may succeed (connection lost, timeout).
    """

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class ConnectionClosed(WsgateError):
    """The client SDK's connection ended and the client does not reconnect.

    Raised by the client's iterators and calls after a terminal or application
    close code (docs/protocol.md section 9), or any failure with reconnecting off.

    Attributes:
        code: the close code; 1006 when no close frame came or the upgrade failed.
        reason: the close reason, for people: act on the code.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason
