"""What both connection adapters share: the door checks, token lookup, authentication.

The picows listener (:mod:`wsgate.server.listener`) and the ASGI mount
(:mod:`wsgate.server.asgi`) accept the same clients the same way: these helpers
are the one place the checks are written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from wsgate.auth import AuthRequest, Identity, OriginPolicy
from wsgate.errors import AuthError, TokenExpired
from wsgate.hub import ClientConnection
from wsgate.protocol.codec import Codec, codec_for_subprotocol
from wsgate.protocol.codes import CloseCode, ErrorCode
from wsgate.protocol.messages import Auth, Error

if TYPE_CHECKING:
    from wsgate.metrics import Metrics
    from wsgate.node import Node

__all__ = [
    "AdapterConnection",
    "Denied",
    "close_if_overdue",
    "count_close",
    "door_check",
    "offered_subprotocols",
    "reauthenticate",
    "token_from",
    "verify",
]

log = logging.getLogger("wsgate.server")


class AdapterConnection(ClientConnection, Protocol):
    """What both adapters' connections add to :class:`~wsgate.hub.ClientConnection`."""

    closing: bool
    accepted_at: float

    @property
    def authenticated(self) -> bool:
        """True once the session is open."""
        ...


@dataclass(frozen=True, slots=True)
class Denied:
    """An upgrade refused at the door: the HTTP status and its text."""

    status: int
    text: str


def door_check(
    node: Node,
    origins: OriginPolicy,
    headers: dict[str, str],
    *,
    connections: int,
    accepting: bool,
) -> Codec | Denied:
    """The codec of an upgrade request (lower-case ``headers``), or why it is refused.

    Counts refusals in the node's metrics.
    """
    metrics = node.metrics
    if node.closing or not accepting:
        metrics.connections_rejected += 1
        return Denied(503, "node shutting down")
    if not origins.allows(headers.get("origin"), headers.get("host")):
        metrics.connections_rejected += 1
        return Denied(403, "origin not allowed")
    codec = codec_for_subprotocol(offered_subprotocols(headers))
    if codec is None:
        metrics.connections_rejected += 1
        return Denied(400, "unsupported subprotocol: offer wsgate.v1.json or wsgate.v1.msgpack")
    if connections >= node.config.server.max_connections:
        metrics.connections_rejected += 1
        return Denied(503, "too many connections, try again later")
    return codec


def offered_subprotocols(headers: dict[str, str]) -> list[str]:
    """The subprotocols a client offered (``Sec-WebSocket-Protocol``)."""
    offered = headers.get("sec-websocket-protocol", "")
    return [t.strip() for t in offered.split(",") if t.strip()]


def token_from(headers: dict[str, str], query: dict[str, str]) -> str | None:
    """The token of an upgrade: ``Authorization: Bearer`` wins over ``?token=``."""
    token = query.get("token")
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        token = credentials.strip()
    return token


async def verify(
    node: Node,
    token: str | None,
    headers: dict[str, str],
    query: dict[str, str],
    remote_address: str | None,
) -> Identity:
    """Authenticate ``token`` with an upgrade's headers; raises AuthError (expired too)."""
    request = AuthRequest(token=token, headers=headers, query=query, remote_address=remote_address)
    identity = await node.authenticate(request)
    if identity.expires_at is not None and identity.expires_at <= time.time():
        raise TokenExpired("token expired")
    return identity


def count_close(metrics: Metrics, code: int) -> None:
    """Count a close the session decided on (size, rate, protocol, auth)."""
    if code == CloseCode.MESSAGE_TOO_BIG:
        metrics.oversized_messages += 1
    elif code == CloseCode.RATE_LIMITED:
        metrics.rate_limited += 1
    elif code == CloseCode.PROTOCOL_ERROR:
        metrics.protocol_errors += 1
    elif code == CloseCode.AUTH_FAILED:
        metrics.auth_failures += 1


async def reauthenticate(
    node: Node,
    conn: AdapterConnection,
    message: Auth,
    headers: dict[str, str],
    query: dict[str, str],
) -> None:
    """An ``auth`` on an open connection: apply the new identity, or answer ``auth_failed``."""
    try:
        identity = await verify(node, message.token, headers, query, conn.remote_address)
    except AuthError as exc:
        node.metrics.auth_failures += 1
        log.info("re-authentication failed for %r: %s", conn, exc)
        error = Error(code=ErrorCode.AUTH_FAILED, message=str(exc)[:120], id=message.id)
        conn.deliver(conn.codec.encode(error))
        return
    if not conn.closing:
        node.reauthenticate(conn, identity, message.id)


def close_if_overdue(node: Node, conn: AdapterConnection, now: float, wall: float) -> bool:
    """Close a connection past its authentication deadline or token expiry.

    Returns:
        True when the connection is closing or not yet authenticated (nothing
        more to check for it this sweep).
    """
    if conn.closing:
        return True
    if not conn.authenticated:
        handshake = node.config.server.handshake_timeout
        if now - conn.accepted_at > handshake:
            log.info("closing %r: no authentication within %g s", conn, handshake)
            conn.close(CloseCode.AUTH_TIMEOUT, "authentication timeout")
        return True
    expires = conn.identity.expires_at
    if expires is not None and wall >= expires:
        node.metrics.token_expirations += 1
        log.info("closing %r: token expired", conn)
        conn.close(CloseCode.TOKEN_EXPIRED, "token expired")
        return True
    return False
