"""The embedded broker: nodes in one process, no network, no copies.

A :class:`MemoryBus` is the shared medium; every :class:`MemoryBroker` attached
to the same bus sees the others' publications (tests use this to run several
nodes in one process). Delivery is synchronous: a publication reaches every
matching node's handler before :meth:`MemoryBroker.publish` returns.
"""

from __future__ import annotations

from typing import Any

from wsgate.broker.base import BrokerHandler
from wsgate.errors import InvalidState
from wsgate.publication import Publication
from wsgate.topics import TopicTrie

__all__ = ["MemoryBroker", "MemoryBus"]


class MemoryBus:
    """The medium shared by the memory brokers of one process."""

    __slots__ = ("handlers", "topics")

    def __init__(self) -> None:
        self.topics: TopicTrie[BrokerHandler] = TopicTrie()
        self.handlers: dict[str, BrokerHandler] = {}


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

    async def broadcast(self, payload: Any) -> None:
        for handler in list(self._bus.handlers.values()):
            handler.on_broadcast(payload)
