"""Every message of the wire protocol, as frozen typed records.

A message is a map whose ``op`` field names its type. Payloads travel in one of
two fields: ``data`` (any JSON-compatible value) or ``bin`` (raw bytes; base64 in
the JSON encoding, a native binary string in MessagePack). See docs/protocol.md.

Client -> server: ``auth sub unsub pub call reply ping``.
Server -> client: ``welcome msg push req ok error pong``.

Ids: a client numbers its own ``sub``/``unsub``/``pub``/``call``/``ping`` messages
and the server answers with ``ok``/``error`` carrying the same ``id``; the server
numbers its ``req`` messages and the client answers each with ``reply``. The two
id spaces are independent. Ids are integers in [0, 2**53 - 1] so that JavaScript
clients can hold them exactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "MAX_ID",
    "Auth",
    "Call",
    "ClientMessage",
    "Error",
    "ErrorInfo",
    "Msg",
    "Ok",
    "Ping",
    "Pong",
    "Pub",
    "Push",
    "Reply",
    "Req",
    "ServerMessage",
    "Sub",
    "Unsub",
    "Welcome",
    "payload_fields",
    "payload_of",
]

MAX_ID: Final = 2**53 - 1

Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class _Message(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="op"):
    """Base of every message: frozen, compact (default fields are not sent)."""


# -- client -> server -----------------------------------------------------------------


class Auth(_Message, frozen=True, tag="auth"):
    """Authenticate with a token (when none came with the HTTP upgrade).

    On an open connection it re-authenticates: a fresh token for the same user
    (refresh before expiry), or a first user token on an anonymous connection.
    With an ``id`` the server answers ``ok`` or ``error``.
    """

    token: Annotated[str, msgspec.Meta(max_length=16384)]
    id: Id | None = None


class Sub(_Message, frozen=True, tag="sub"):
    """Subscribe to a topic or pattern."""

    id: Id
    topic: Name


class Unsub(_Message, frozen=True, tag="unsub"):
    """Drop a subscription made earlier with exactly this topic or pattern."""

    id: Id
    topic: Name


class Pub(_Message, frozen=True, tag="pub"):
    """Publish to a topic. With an ``id`` the server acknowledges with ``ok``."""

    topic: Name
    data: Any = None
    bin: bytes | None = None
    id: Id | None = None


class Call(_Message, frozen=True, tag="call"):
    """Call a backend method and await its ``ok`` (result) or ``error``."""

    id: Id
    method: Name
    data: Any = None
    bin: bytes | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] | None = None


class ErrorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why a ``reply`` failed: a code (free-form) and an optional message and details."""

    code: Name
    message: str = ""
    data: Any = None


class Reply(_Message, frozen=True, tag="reply"):
    """The client's answer to a server ``req`` with the same ``id``."""

    id: Id
    data: Any = None
    bin: bytes | None = None
    error: ErrorInfo | None = None


class Ping(_Message, frozen=True, tag="ping"):
    """Application-level ping for clients that cannot send WebSocket pings (browsers)."""

    id: Id | None = None


ClientMessage = Auth | Sub | Unsub | Pub | Call | Reply | Ping


# -- server -> client -----------------------------------------------------------------


class Welcome(_Message, frozen=True, tag="welcome"):
    """First message after a successful authentication."""

    cid: str
    node: str
    user: str | None = None
    subs: tuple[str, ...] = ()
    ping_interval: float | None = None


class Msg(_Message, frozen=True, tag="msg"):
    """A publication on a topic the connection is subscribed to."""

    topic: str
    data: Any = None
    bin: bytes | None = None


class Push(_Message, frozen=True, tag="push"):
    """A message addressed to this connection (send, send_to_user, broadcast)."""

    data: Any = None
    bin: bytes | None = None


class Req(_Message, frozen=True, tag="req"):
    """A server request: answer with ``reply`` carrying the same ``id``."""

    id: Id
    data: Any = None
    bin: bytes | None = None


class Ok(_Message, frozen=True, tag="ok"):
    """Success answer to the client message with the same ``id`` (call results in data)."""

    id: Id
    data: Any = None
    bin: bytes | None = None


class Error(_Message, frozen=True, tag="error"):
    """Failure answer to the client message with the same ``id`` (absent when unknown)."""

    code: str
    message: str = ""
    id: Id | None = None
    data: Any = None


class Pong(_Message, frozen=True, tag="pong"):
    """Answer to an application-level ``ping``."""

    id: Id | None = None


ServerMessage = Welcome | Msg | Push | Req | Ok | Error | Pong


def payload_fields(value: Any) -> tuple[Any, bytes | None]:
    """Split a user payload into the ``(data, bin)`` pair of a message.

    Bytes-like values travel in ``bin`` (raw in MessagePack, base64 in JSON);
    everything else in ``data``.
    """
    if isinstance(value, bytes):
        return None, value
    if isinstance(value, bytearray | memoryview):
        return None, bytes(value)
    return value, None


def payload_of(message: Pub | Call | Reply | Msg | Push | Req | Ok) -> Any:
    """The user payload of a message: ``bin`` when present, else ``data``."""
    return message.bin if message.bin is not None else message.data
