"""The embedded broker: nodes in one process, no network, no copies.

A :class:`MemoryBus` is the shared medium; every :class:`MemoryBroker` attached
to the same bus sees the others' publications (tests use this to run several
nodes in one process). Delivery is synchronous: a publication reaches every
matching node's handler before :meth:`MemoryBroker.publish` returns.

Calls for workers wait in one :class:`asyncio.Queue` per namespace on the bus
(at most :data:`~wsgate.broker.base.CALL_BACKLOG`; the oldest goes first
when it is full). At-least-once is simple in one process: a worker cannot die
without the whole process, so the only "death" is its
:meth:`~MemoryBroker.serve_calls` being cancelled, and then the calls it had
not finished go back to the queue at once (``claim_after`` is not needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from wsgate.broker.base import (
    CALL_BACKLOG,
    CALLS_IN_FLIGHT,
    BrokerHandler,
    CallHandler,
    Registration,
)
from wsgate.errors import InvalidState
from wsgate.publication import Publication
from wsgate.topics import TopicTrie

__all__ = ["MemoryBroker", "MemoryBus", "MemoryPresence"]

log = logging.getLogger("wsgate.broker.memory")


class MemoryBus:
    """The medium shared by the memory brokers of one process."""

    __slots__ = ("calls", "connections", "handlers", "nodes", "topics", "users", "workers")

    def __init__(self) -> None:
        self.topics: TopicTrie[BrokerHandler] = TopicTrie()
        self.handlers: dict[str, BrokerHandler] = {}
        self.connections: dict[str, Registration] = {}
        self.users: dict[str, set[str]] = {}
        self.nodes: set[str] = set()
        self.calls: dict[str, asyncio.Queue[bytes]] = {}
        self.workers: dict[str, int] = {}  # namespace -> live workers

    def call_queue(self, namespace: str) -> asyncio.Queue[bytes]:
        """The queue of the calls waiting for a worker of ``namespace``."""
        queue = self.calls.get(namespace)
        if queue is None:
            queue = self.calls[namespace] = asyncio.Queue(CALL_BACKLOG)
        return queue


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
        self._closed: asyncio.Future[None] | None = None  # resolved by close()

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
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)  # ends this broker's worker loops

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

    async def enqueue_call(self, namespace: str, data: bytes) -> bool:
        self._check_started()
        if not self._bus.workers.get(namespace):
            return False
        queue = self._bus.call_queue(namespace)
        if queue.full():  # like the Redis stream's trimming: the oldest goes
            queue.get_nowait()
        queue.put_nowait(data)
        return True

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
        self._check_started()
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        closed = self._closed
        bus = self._bus
        queue = bus.call_queue(namespace)
        slots = asyncio.Semaphore(max_in_flight)
        running: dict[asyncio.Task[None], bytes] = {}

        def finished(task: asyncio.Task[None]) -> None:
            running.pop(task, None)
            slots.release()

        bus.workers[namespace] = bus.workers.get(namespace, 0) + 1
        try:
            if on_ready is not None:
                on_ready()
            while True:
                await slots.acquire()
                if closed.done():
                    raise InvalidState("broker is closed")
                if queue.empty():
                    getter = asyncio.ensure_future(queue.get())
                    waits: list[asyncio.Future[Any]] = [getter, closed]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not getter.done():
                            getter.cancel()
                    if not getter.done() or getter.cancelled():
                        raise InvalidState("broker is closed")
                    data = getter.result()
                else:
                    data = queue.get_nowait()
                task = asyncio.create_task(_handle_call(handle, data, namespace))
                running[task] = data
                task.add_done_callback(finished)
                # Let the other workers take the next call: a burst is shared out.
                await asyncio.sleep(0)
        finally:
            count = bus.workers.get(namespace, 0) - 1
            if count > 0:
                bus.workers[namespace] = count
            else:
                bus.workers.pop(namespace, None)
            # This worker "died": what it had not finished goes to another one.
            unfinished = [task for task in running if not task.done()]
            for task in unfinished:
                task.cancel()
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(running[task])
            if unfinished:
                await asyncio.wait(unfinished)

    def _check_started(self) -> None:
        if self._handler is None:
            raise InvalidState("broker is not started")


async def _handle_call(handle: CallHandler, data: bytes, namespace: str) -> None:
    try:
        await handle(data)
    except Exception:
        log.exception("a worker of %s failed on a call", namespace)


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
