"""The embedded broker: nodes in one process, no network, no copies.

A :class:`MemoryBus` is the shared medium; every :class:`MemoryBroker` attached
to the same bus sees the others' publications (tests use this to run several
nodes in one process). Delivery is synchronous: a publication reaches every
matching node's handler before :meth:`MemoryBroker.publish` returns.
"""

from __future__ import annotations

from typing import Any

from wsgate.broker.base import BrokerHandler, Registration
from wsgate.errors import InvalidState
from wsgate.publication import Publication
from wsgate.topics import TopicTrie

__all__ = ["MemoryBroker", "MemoryBus", "MemoryPresence"]


class MemoryBus:
    """The medium shared by the memory brokers of one process."""

    __slots__ = ("connections", "handlers", "nodes", "topics", "users")

    def __init__(self) -> None:
        self.topics: TopicTrie[BrokerHandler] = TopicTrie()
        self.handlers: dict[str, BrokerHandler] = {}
        self.connections: dict[str, Registration] = {}
        self.users: dict[str, set[str]] = {}
        self.nodes: set[str] = set()


class MemoryBroker:
    """A broker for one process (the default: ``memory://``).

    Args:
        bus: the medium to share with other brokers; a private one by default.
    """

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._bus = bus if bus is not None else MemoryBus()
        self._handler: BrokerHandler | None = None
        self._node_id: str | None = None
        self._patterns: set[str] = set()

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        if node_id in self._bus.handlers:
            raise InvalidState(f"node {node_id!r} is already on this bus")
        self._node_id = node_id
        self._handler = handler
        self._bus.handlers[node_id] = handler

    async def close(self) -> None:
        handler = self._handler
        if handler is None:
            return
        for pattern in self._patterns:
            self._bus.topics.remove(pattern, handler)
        self._patterns.clear()
        if self._node_id is not None:
            self._bus.handlers.pop(self._node_id, None)
        self._handler = None

    async def subscribe(self, pattern: str) -> None:
        if self._handler is None:
            raise InvalidState("broker is not started")
        self._patterns.add(pattern)
        self._bus.topics.add(pattern, self._handler)

    async def unsubscribe(self, pattern: str) -> None:
        if self._handler is None:
            return
        self._patterns.discard(pattern)
        self._bus.topics.remove(pattern, self._handler)

    async def publish(self, publication: Publication) -> None:
        for handler in self._bus.topics.match(publication.topic):
            handler.on_publication(publication)

    async def send_direct(self, inbox: str, data: bytes) -> bool:
        handler = self._bus.handlers.get(inbox)
        if handler is None:
            return False
        handler.on_direct(data)
        return True

    async def broadcast(self, payload: Any) -> None:
        for handler in list(self._bus.handlers.values()):
            handler.on_broadcast(payload)


class MemoryPresence:
    """Presence for nodes in one process (the default: ``memory://``).

    Nothing outlives the process, so there is no lease to keep: a node's
    entries go when it closes.

    Args:
        bus: the medium to share with other nodes' presence; private by default.
    """

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._bus = bus if bus is not None else MemoryBus()
        self._node: str | None = None

    async def start(self, node_id: str | None) -> None:
        self._node = node_id
        if node_id is not None:
            self._bus.nodes.add(node_id)

    async def close(self) -> None:
        node, self._node = self._node, None
        if node is None:
            return
        self._bus.nodes.discard(node)
        for registration in [r for r in self._bus.connections.values() if r.node == node]:
            await self.unregister(registration)

    async def register(self, registration: Registration) -> Registration | None:
        bus = self._bus
        previous = bus.connections.get(registration.connection_id)
        if previous is not None and previous.user is not None:
            self._drop_user(previous.user, previous.connection_id)
        bus.connections[registration.connection_id] = registration
        if registration.user is not None:
            bus.users.setdefault(registration.user, set()).add(registration.connection_id)
        return previous if previous != registration else None

    async def unregister(self, registration: Registration) -> bool:
        bus = self._bus
        if bus.connections.get(registration.connection_id) != registration:
            return False
        del bus.connections[registration.connection_id]
        if registration.user is not None:
            self._drop_user(registration.user, registration.connection_id)
        return True

    async def locate(self, connection_id: str) -> Registration | None:
        return self._bus.connections.get(connection_id)

    async def locate_user(self, user: str) -> list[Registration]:
        bus = self._bus
        found = (bus.connections.get(cid) for cid in bus.users.get(user, ()))
        return sorted((r for r in found if r is not None), key=lambda r: r.connection_id)

    async def nodes(self) -> list[str]:
        return sorted(self._bus.nodes)

    def _drop_user(self, user: str, connection_id: str) -> None:
        cids = self._bus.users.get(user)
        if cids is not None:
            cids.discard(connection_id)
            if not cids:
                del self._bus.users[user]
