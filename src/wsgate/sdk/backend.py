"""The backend SDK: reach the gateway's connections from any Python process.

No node runs in the backend process: it joins the broker with an inbox of its
own (for replies) and reads presence to find which node holds a connection::

    async with wsgate.connect_backend("redis://localhost:6379/0") as gw:
        await gw.publish("news.tech", {"title": "hello"})
        answer = await gw.request("device-7", {"cmd": "status"}, timeout=5)

With ``memory://`` a backend only reaches nodes in its own process, on the
same bus (``bus=``); that is for tests and embedding.

A backend can also *serve* client ``call``s as a worker: methods registered
with :meth:`Backend.method` are served while it runs, load-balanced over every
backend process serving the same namespace (a method's first dotted token)::

    async with wsgate.connect_backend("redis://localhost:6379/0") as gw:
        @gw.method("orders.create")
        async def create(call: wsgate.CallContext) -> dict[str, int]:
            if not call.data.get("items"):
                raise wsgate.RemoteError("invalid_input", "no items")
            return {"order": 17}

        await gw.ready()  # live: calls are routed here from now on
        await asyncio.Event().wait()

A worker serves every method of its namespaces; a call of a method it has no
handler for is answered ``unknown_method``. Calls are taken at least once: a
worker that dies mid-call loses nothing (another takes the call over after
``claim_after`` seconds), but a handler may then run twice for one call, so
handlers with side effects should be idempotent. In a worker, a call's
``identity`` holds the user and meta only: the node checked the grants.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from wsgate import topics
from wsgate.auth import Identity
from wsgate.broker import Broker, Presence, create_broker, create_presence
from wsgate.broker.base import CALLS_IN_FLIGHT
from wsgate.broker.memory import MemoryBroker, MemoryBus, MemoryPresence
from wsgate.calls import CallContext, MethodHandler
from wsgate.cluster import CallJob, Response, Router, decode_envelope, encode_envelope
from wsgate.errors import BrokerError, InvalidState, RemoteError
from wsgate.hub import ConnectionInfo
from wsgate.protocol.codes import CloseCode, ErrorCode, is_sendable
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
        claim_after: seconds after which a call taken by a worker process that
            went silent (killed, frozen, cut off) is handed to another worker.
            Calls still running in a live worker are never taken from it, so this
            only bounds how late a crashed worker's calls are resumed.
        calls_in_flight: calls this backend handles concurrently per namespace.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wsgate",
        request_timeout: float = 10.0,
        bus: MemoryBus | None = None,
        claim_after: float = 5.0,
        calls_in_flight: int = CALLS_IN_FLIGHT,
    ) -> None:
        if claim_after <= 0 or calls_in_flight < 1:
            raise InvalidState("claim_after must be positive and calls_in_flight at least 1")
        self.id = "backend-" + secrets.token_hex(6)
        self.claim_after = claim_after
        self.calls_in_flight = calls_in_flight
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
        self._methods: dict[str, MethodHandler] = {}
        # namespace -> its worker loop, and the event set once the worker is live
        self._workers: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the broker and the presence; serve the registered methods.

        Returns once every served namespace has a live worker here (see :meth:`ready`).
        """
        if self._started:
            return
        await self.broker.start(self.id, self)
        await self.presence_backend.start(None)
        self._started = True
        for name in list(self._methods):
            self._serve(_namespace(name))
        try:
            await self.ready()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Leave; requests still waiting fail with ``InvalidState``.

        Worker loops stop first: calls they were handling are not answered here
        and go to another worker (see ``claim_after``).
        """
        if not self._started:
            return
        self._started = False
        workers, self._workers = self._workers, {}
        for task, _ in workers.values():
            task.cancel()
        if workers:
            await asyncio.wait([task for task, _ in workers.values()])
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

    async def stats(self) -> dict[str, Any]:
        """Every live node's counters and gauges, by node id."""
        return await self.router.node_stats()

    async def presence(self, topic: str) -> list[ConnectionInfo]:
        """Every connection, on every node, subscribed to a pattern matching ``topic``."""
        return await self.router.presence_of(topic)

    # -- serving calls ----------------------------------------------------------------

    def method(self, name: str) -> Callable[[MethodHandler], MethodHandler]:
        """Decorator registering a handler for client ``call``s of ``name`` (a worker)."""

        def register(handler: MethodHandler) -> MethodHandler:
            self.register_method(name, handler)
            return handler

        return register

    def register_method(self, name: str, handler: MethodHandler) -> None:
        """Serve ``call``s of ``name`` with ``handler``, as a worker of its namespace.

        On a started backend the worker starts at once; await :meth:`ready` to
        know when calls reach it.

        Raises:
            InvalidTopic: the name is not a well-formed dotted name.
            InvalidState: a handler is already registered under that name.
        """
        topics.validate_topic(name)
        if name in self._methods:
            raise InvalidState(f"method {name!r} already has a handler")
        self._methods[name] = handler
        if self._started:
            self._serve(_namespace(name))

    async def ready(self, timeout: float = 10.0) -> None:
        """Wait until every namespace with a registered method has a live worker here.

        Raises:
            BrokerError: not live within ``timeout`` seconds (``temporary=True``).
            InvalidState: a worker loop ended (the broker was closed).
        """
        for namespace, (task, live) in list(self._workers.items()):
            waiter = asyncio.ensure_future(live.wait())
            try:
                await asyncio.wait(
                    [task, waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise InvalidState(f"the worker of {namespace} ended") from task.exception()
            if not live.is_set():
                raise BrokerError(
                    f"the worker of {namespace} is not live after {timeout:g} s", temporary=True
                )

    def _serve(self, namespace: str) -> None:
        if namespace in self._workers:
            return
        live = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self.broker.serve_calls(
                namespace,
                self.id,
                self._handle_call,
                claim_after=self.claim_after,
                max_in_flight=self.calls_in_flight,
                on_ready=live.set,
            ),
            name=f"wsgate-worker-{namespace}",
        )
        task.add_done_callback(_worker_done)
        self._workers[namespace] = (task, live)

    async def _handle_call(self, data: bytes) -> None:
        """Run one queued call and send its Response to the calling node."""
        job = decode_envelope(data)
        if not isinstance(job, CallJob):
            log.warning("a call queue held something else than a call; skipped")
            return
        remaining = job.deadline - time.time()
        if remaining <= 0:
            log.debug("call of %s skipped: its caller stopped waiting", job.method)
            return
        handler = self._methods.get(job.method)
        if handler is None:
            response = Response(
                job.rid, error=ErrorCode.UNKNOWN_METHOD, message=f"no handler for {job.method}"
            )
        else:
            outcome = await self._run_handler(handler, job, remaining)
            if outcome is None:
                return  # timed out: the node has answered the client already
            response = outcome
        try:
            encoded = encode_envelope(response)
        except TypeError as exc:
            log.error("result of %s cannot be encoded: %s", job.method, exc)
            encoded = encode_envelope(
                Response(job.rid, error=ErrorCode.INTERNAL, message="result cannot be encoded")
            )
        try:
            await self.broker.send_direct(job.reply_to, encoded)
        except BrokerError as exc:
            log.warning("could not answer a call of %s: %s", job.method, exc)

    async def _run_handler(
        self, handler: MethodHandler, job: CallJob, timeout: float
    ) -> Response | None:
        context = CallContext(
            method=job.method,
            data=job.payload,
            connection_id=job.cid,
            user=job.user,
            identity=Identity(user=job.user, meta=job.meta),
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout) as deadline:
                result = await handler(context)
        except TimeoutError:
            if deadline.expired():
                log.info(
                    "call of %s cancelled after %.3f s: its caller stopped waiting",
                    job.method,
                    time.monotonic() - started,
                )
                return None
            log.exception("method %s failed", job.method)
            return Response(job.rid, error=ErrorCode.METHOD_ERROR, message="method failed")
        except RemoteError as exc:
            return Response(job.rid, error=exc.code, message=exc.remote_message, data=exc.data)
        except Exception:
            log.exception("method %s failed after %.3f s", job.method, time.monotonic() - started)
            return Response(job.rid, error=ErrorCode.METHOD_ERROR, message="method failed")
        return Response(job.rid, result)

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


def _namespace(method: str) -> str:
    return method.split(".", 1)[0]


def _worker_done(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a call worker loop ended", exc_info=task.exception())


def connect_backend(url: str, **options: Any) -> Backend:
    """A :class:`Backend` for ``url``; use it with ``async with``.

    Args:
        url: the broker URL the nodes use.
        **options: see :class:`Backend`.
    """
    return Backend(url, **options)
