"""The backend SDK: reach the gateway's connections from any Python process.

No node runs in the backend process: it joins the broker with an inbox of its
own (for replies) and reads presence to find which node holds a connection::

    async with wsgate.connect_backend("redis://localhost:6379/0") as gw:
        await gw.publish("news.tech", {"title": "hello"})
        answer = await gw.request("device-7", {"cmd": "status"}, timeout=5)

With ``memory://`` a backend only reaches nodes in its own process, on the
same bus (``bus=``); that is for tests and embedding.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from wsgate.broker import Broker, Presence, create_broker, create_presence
from wsgate.broker.memory import MemoryBroker, MemoryBus, MemoryPresence
from wsgate.cluster import Response, Router, decode_envelope
from wsgate.errors import InvalidState
from wsgate.hub import ConnectionInfo
from wsgate.protocol.codes import CloseCode, is_sendable
from wsgate.publication import Publication

__all__ = ["Backend", "connect_backend"]

log = logging.getLogger("wsgate.backend")


class Backend:
    """A connection to the gateway for backend code (not a node).

    Args:
        url: the broker URL the nodes use (``redis://...``, or ``memory://``).
        prefix: the nodes' key prefix (``broker.prefix``).
        request_timeout: default seconds for :meth:`request`.
        bus: for ``memory://``: the bus the in-process nodes share.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wsgate",
        request_timeout: float = 10.0,
        bus: MemoryBus | None = None,
    ) -> None:
        self.id = "backend-" + secrets.token_hex(6)
        self.broker: Broker
        self.presence_backend: Presence
        if bus is not None:
            self.broker, self.presence_backend = MemoryBroker(bus), MemoryPresence(bus)
        else:
            self.broker = create_broker(url, prefix=prefix)
            self.presence_backend = create_presence(url, prefix=prefix)
        self.router = Router(
            self.broker, self.presence_backend, self.id, request_timeout=request_timeout
        )
        self._started = False

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the broker (an inbox for replies) and the presence (read-only)."""
        if self._started:
            return
        await self.broker.start(self.id, self)
        await self.presence_backend.start(None)
        self._started = True

    async def close(self) -> None:
        """Leave; requests still waiting fail with ``InvalidState``."""
        if not self._started:
            return
        self._started = False
        self.router.fail_all(InvalidState("backend closed"))
        await self.presence_backend.close()
        await self.broker.close()

    async def __aenter__(self) -> Backend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- verbs (the same as the node's) -----------------------------------------------

    async def publish(self, topic: str, data: Any) -> None:
        """Publish to every subscriber of ``topic`` on every node."""
        await self.router.publish(topic, data)

    async def send(self, connection_id: str, data: Any) -> bool:
        """Push ``data`` to one connection; False when no live node holds it."""
        return await self.router.send(connection_id, data)

    async def send_to_user(self, user: str, data: Any) -> int:
        """Push ``data`` to every connection of ``user``; returns how many were reached."""
        return await self.router.send_to_user(user, data)

    async def broadcast(self, data: Any) -> None:
        """Push ``data`` to every connection of every node."""
        await self.router.broadcast(data)

    async def request(self, connection_id: str, data: Any, timeout: float | None = None) -> Any:
        """Send a request to a connection and await its reply.

        Raises:
            NotConnected, RequestTimeout, RemoteError, ConnectionLost: as ``Node.request``.
        """
        return await self.router.request(connection_id, data, timeout)

    async def disconnect(
        self, connection_id: str, code: int = CloseCode.DISCONNECTED, reason: str = ""
    ) -> bool:
        """Close a connection on whichever node holds it."""
        if not is_sendable(code):
            raise InvalidState(f"close code {code} cannot be sent in a close frame")
        return await self.router.disconnect(connection_id, code, reason[:120])

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """What the holding node knows about a connection, or None."""
        return await self.router.connection_info(connection_id)

    async def presence(self, topic: str) -> list[ConnectionInfo]:
        """Every connection, on every node, subscribed to a pattern matching ``topic``."""
        return await self.router.presence_of(topic)

    # -- broker handler ---------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        """A backend subscribes to nothing; ignore."""

    def on_broadcast(self, payload: Any) -> None:
        """Broadcasts are for client connections; ignore."""

    def on_direct(self, data: bytes) -> None:
        """Replies to this backend's requests and queries."""
        envelope = decode_envelope(data)
        if isinstance(envelope, Response):
            self.router.on_response(envelope)
        elif envelope is not None:
            log.warning("unexpected %s in a backend inbox", type(envelope).__name__)


def connect_backend(url: str, **options: Any) -> Backend:
    """A :class:`Backend` for ``url``; use it with ``async with``.

    Args:
        url: the broker URL the nodes use.
        **options: see :class:`Backend`.
    """
    return Backend(url, **options)
