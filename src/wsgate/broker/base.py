"""The interfaces between a node and the engine that joins nodes together.

A :class:`Broker` moves publications between nodes by interest: a node
subscribes a pattern only while one of its clients wants it (the hub counts),
and the broker hands it back every publication whose topic matches one of its
patterns. Backends are picked by URL in :func:`wsgate.broker.create_broker`.

It also queues client ``call``s for backend *workers*: :meth:`Broker.enqueue_call`
hands a call to the workers of its method's namespace, load-balanced, and
:meth:`Broker.serve_calls` is one worker's loop. A call is taken at least
once: one picked up by a worker that dies before finishing it is handed to
another live worker, so a handler may (rarely) run twice for one call; the
node keeps the first answer and drops the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from wsgate.publication import Publication

__all__ = [
    "CALLS_IN_FLIGHT",
    "CALL_BACKLOG",
    "Broker",
    "BrokerHandler",
    "CallHandler",
    "Presence",
    "Registration",
]

CallHandler = Callable[[bytes], Awaitable[None]]
"""What a worker runs for each queued call envelope (see :meth:`Broker.serve_calls`)."""

CALLS_IN_FLIGHT: Final = 64
"""Calls one worker loop handles concurrently, by default."""
CALL_BACKLOG: Final = 10_000
"""Calls queued per namespace, about, before the oldest are dropped (they time out)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """Where a connection lives.

    Attributes:
        connection_id: the connection's id (server-assigned or claimed).
        node: the id of the node holding it.
        user: its user, if any.
        token: unique per connection instance, so that removing an old entry
            never removes a newer connection that took over the same id.
    """

    connection_id: str
    node: str
    user: str | None
    token: str


class BrokerHandler(Protocol):
    """What a broker calls back into; the node implements it."""

    def on_publication(self, publication: Publication) -> None:
        """A publication matching one of this node's patterns arrived."""
        ...

    def on_broadcast(self, payload: Any) -> None:
        """A broadcast to every connection arrived."""
        ...

    def on_direct(self, data: bytes) -> None:
        """A message addressed to this participant's inbox arrived (an envelope)."""
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

    async def send_direct(self, inbox: str, data: bytes) -> bool:
        """Hand ``data`` to the participant started with id ``inbox``.

        Returns:
            True when a live participant has that inbox; False when none does
            (so the caller can fail fast instead of waiting for a timeout).
        """
        ...

    async def enqueue_call(self, namespace: str, data: bytes) -> bool:
        """Queue a call envelope for the workers of ``namespace``.

        Args:
            namespace: the first dotted token of the called method (``orders``).
            data: the envelope, handed as is to one worker's ``handle``.

        Returns:
            True when it was queued; False when no live worker serves the
            namespace (nothing is queued, so the caller can answer at once).

        Raises:
            BrokerError: the broker failed (``temporary=True`` when unreachable).
            InvalidState: the broker is not started, or closed.
        """
        ...

    async def serve_calls(
        self,
        namespace: str,
        worker_id: str,
        handle: CallHandler,
        *,
        claim_after: float,
        max_in_flight: int = CALLS_IN_FLIGHT,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Be one worker of ``namespace`` until cancelled.

        Hands every queued envelope to ``handle`` (at most ``max_in_flight``
        at a time) and acknowledges it when ``handle`` returns or raises; the
        worker is live (``enqueue_call`` returns True) while this runs. An
        envelope taken by a worker that stopped without acknowledging it (a
        crash, or this coroutine cancelled while ``handle`` runs: ``handle``
        is cancelled too) goes to another live worker: at once in one
        process, after ``claim_after`` seconds without news of the dead
        worker across processes. Temporary broker outages are retried.

        Args:
            namespace: the method namespace served.
            worker_id: unique among the workers of the namespace.
            handle: called with each envelope.
            claim_after: seconds after which an envelope of a silent worker
                is handed to another one.
            max_in_flight: concurrent ``handle`` calls at most.
            on_ready: called once, when the worker is first live.

        Raises:
            InvalidState: the broker is not started, or was closed.
        """
        ...


@runtime_checkable
class Presence(Protocol):
    """Which node holds which connection, cluster-wide, under node leases.

    Entries written by a node live only as long as its lease: a node that dies
    without closing leaves nothing once the lease expires, and a backend that
    loses its data (restart, FLUSHALL) is repaired by re-registration at the
    next heartbeat.
    """

    async def start(self, node_id: str | None) -> None:
        """Connect; with a node id, also take and keep renewing that node's lease.

        Backend processes that only look things up pass None.
        """
        ...

    async def close(self) -> None:
        """Drop this node's entries and lease (graceful stop); idempotent."""
        ...

    async def register(self, registration: Registration) -> Registration | None:
        """Record a connection; the newest registration of an id wins.

        Returns:
            The registration it replaced (another node's or an older instance on
            this node), which the caller must close (takeover); None otherwise.
        """
        ...

    async def unregister(self, registration: Registration) -> bool:
        """Remove a registration only if it is still the current one (compare-and-delete)."""
        ...

    async def locate(self, connection_id: str) -> Registration | None:
        """The live registration of a connection id, if any."""
        ...

    async def locate_user(self, user: str) -> list[Registration]:
        """Every live registration of a user's connections."""
        ...

    async def nodes(self) -> list[str]:
        """The ids of the nodes holding a live lease."""
        ...
