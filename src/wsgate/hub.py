"""This node's connections: by id, by user, and by topic.

The hub is plain bookkeeping (no I/O, no awaiting). It answers four questions
fast: which connection has this id, which connections belong to this user,
which connections want a publication on this topic (one trie lookup, cached
per topic), and whether a pattern just gained its first or lost its last local
subscriber (so the node subscribes or unsubscribes it in the broker).

Takeover rule: :meth:`Hub.add` replaces an existing connection with the same
id and returns the old one for the caller to close; :meth:`Hub.remove` only
deletes the id entry when it still points at *this* connection
(compare-and-delete), so an old connection's cleanup never removes its
successor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsgate.auth import Identity
from wsgate.protocol.codec import Codec
from wsgate.topics import TopicTrie

__all__ = ["ClientConnection", "ConnectionInfo", "Hub"]


class ClientConnection(Protocol):
    """What the node needs from a client connection (implemented in ``server/``)."""

    id: str
    identity: Identity
    codec: Codec
    subscriptions: set[str]
    connected_at: float
    remote_address: str | None
    pending_requests: set[int]
    inflight_calls: int

    @property
    def user(self) -> str | None:
        """The authenticated user, or None for anonymous connections."""
        ...

    def __hash__(self) -> int:
        """Hashable by identity (kept in sets and the topic trie)."""
        ...

    def deliver(self, payload: bytes) -> None:
        """Queue one encoded message; never blocks, never raises.

        A connection whose queue overflows closes itself with the slow-consumer
        code (after the current fan-out, not in the middle of it).
        """
        ...

    def deliver_fanout(self, payload: bytes) -> None:
        """Like :meth:`deliver`, for a publication or broadcast going to many connections.

        The server may hold it for up to ``flush_interval`` while connections are
        being flushed often, so that one write carries several messages.
        """
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Start a close handshake with ``code``; idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What backends may learn about a connection."""

    id: str
    node: str
    user: str | None
    subscriptions: tuple[str, ...]
    connected_at: float
    remote_address: str | None = None
    encoding: str = "json"
    meta: dict[str, Any] = field(default_factory=dict)


class Hub:
    """Registry of this node's connections."""

    __slots__ = ("_by_id", "_by_user", "_node_id", "_topics")

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._by_id: dict[str, ClientConnection] = {}
        self._by_user: dict[str, set[ClientConnection]] = {}
        self._topics: TopicTrie[ClientConnection] = TopicTrie()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ClientConnection]:
        return iter(list(self._by_id.values()))

    # -- membership -------------------------------------------------------------------

    def add(self, conn: ClientConnection) -> ClientConnection | None:
        """Register a connection; return the one it took over from, if any."""
        previous = self._by_id.get(conn.id)
        self._by_id[conn.id] = conn
        user = conn.user
        if user is not None:
            self._by_user.setdefault(user, set()).add(conn)
        return previous if previous is not conn else None

    def remove(self, conn: ClientConnection) -> list[str]:
        """Forget a connection and its subscriptions.

        Returns:
            The patterns that lost their last local subscriber (for the broker).
        """
        if self._by_id.get(conn.id) is conn:
            del self._by_id[conn.id]
        user = conn.user
        if user is not None:
            conns = self._by_user.get(user)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._by_user[user]
        emptied = [p for p in conn.subscriptions if self._topics.remove(p, conn)]
        conn.subscriptions.clear()
        return emptied

    def change_identity(self, conn: ClientConnection, identity: Identity) -> None:
        """Give a registered connection a new identity, re-indexing it by user."""
        old_user = conn.user
        if old_user is not None:
            conns = self._by_user.get(old_user)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._by_user[old_user]
        conn.identity = identity
        if identity.user is not None and self._by_id.get(conn.id) is conn:
            self._by_user.setdefault(identity.user, set()).add(conn)

    def get(self, connection_id: str) -> ClientConnection | None:
        """The live connection with this id on this node, if any."""
        return self._by_id.get(connection_id)

    def of_user(self, user: str) -> tuple[ClientConnection, ...]:
        """Every connection of ``user`` on this node."""
        return tuple(self._by_user.get(user, ()))

    def users(self) -> int:
        """Number of distinct users connected to this node."""
        return len(self._by_user)

    # -- topics -----------------------------------------------------------------------

    def subscribe(self, conn: ClientConnection, pattern: str) -> bool:
        """Add a subscription; True when ``pattern`` had no local subscriber before."""
        conn.subscriptions.add(pattern)
        return self._topics.add(pattern, conn)

    def unsubscribe(self, conn: ClientConnection, pattern: str) -> bool:
        """Drop a subscription; True when ``pattern`` lost its last local subscriber."""
        conn.subscriptions.discard(pattern)
        return self._topics.remove(pattern, conn)

    def subscribers(self, topic: str) -> tuple[ClientConnection, ...]:
        """Every connection with a subscription matching ``topic``, each once."""
        return self._topics.match(topic)

    def patterns(self) -> list[str]:
        """Every pattern with at least one local subscriber."""
        return self._topics.patterns()

    def info(self, conn: ClientConnection) -> ConnectionInfo:
        """Describe a connection for backends."""
        return ConnectionInfo(
            id=conn.id,
            node=self._node_id,
            user=conn.user,
            subscriptions=tuple(sorted(conn.subscriptions)),
            connected_at=conn.connected_at,
            remote_address=conn.remote_address,
            encoding=conn.codec.name,
            meta=dict(conn.identity.meta),
        )
