"""The interfaces between a node and the engine that joins nodes together.

A :class:`Broker` moves publications between nodes by interest: a node
subscribes a pattern only while one of its clients wants it (the hub counts),
and the broker hands it back every publication whose topic matches one of its
patterns. Backends are picked by URL in :func:`wsgate.broker.create_broker`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from wsgate.publication import Publication

__all__ = ["Broker", "BrokerHandler"]


class BrokerHandler(Protocol):
    """What a broker calls back into; the node implements it."""

    def on_publication(self, publication: Publication) -> None:
        """A publication matching one of this node's patterns arrived."""
        ...

    def on_broadcast(self, payload: Any) -> None:
        """A broadcast to every connection arrived."""
        ...

    def __hash__(self) -> int:
        """Hashable by identity (kept in sets and the topic trie)."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Moves traffic between the nodes of one gateway."""

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        """Connect and start delivering to ``handler``."""
        ...

    async def close(self) -> None:
        """Stop delivering and release every resource; idempotent."""
        ...

    async def subscribe(self, pattern: str) -> None:
        """Receive publications matching ``pattern`` (called once per pattern)."""
        ...

    async def unsubscribe(self, pattern: str) -> None:
        """Stop receiving publications for ``pattern``."""
        ...

    async def publish(self, publication: Publication) -> None:
        """Hand a publication to every node subscribed to a matching pattern."""
        ...

    async def broadcast(self, payload: Any) -> None:
        """Hand a payload to every node, for every connection."""
        ...
