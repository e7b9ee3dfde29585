"""Routing between the processes of one gateway: envelopes and remote verbs.

Every participant (a node, or a backend process) owns an *inbox* in the
broker, named by its id. Direct traffic travels as envelopes (MessagePack,
bytes stay bytes) to the inbox of the node that holds the target connection,
found through :class:`~wsgate.broker.Presence`::

    backend / node A                    broker                   node B (owner)
    request(cid) --locate(cid)--> presence: cid -> B
                 --Request{rid, reply_to=A}-----------------> inbox B
                                                               req -> client, reply <-
    inbox A <----------------------------------------- Response{rid, payload}
    future[rid] resolved; a Response for an unknown rid is dropped (late)

A client ``call`` that no in-process handler serves travels the same way, to
whichever backend worker takes it from the broker's call queue::

    node (client's)                    broker                    backend worker
    expecting() -> rid
    enqueue_call("orders", CallJob{rid, reply_to=node, deadline}) --> queue
                                                            (load-balanced) --> handler
    inbox node <------------------------------------------------ Response{rid, ...}

One reply inbox per process and correlation ids: no blocking broker call per
request and no matching by arrival order. :class:`Router` implements the
backend verbs for targets on *other* nodes; a node adds its local fast paths in
front of it, and the backend SDK uses it as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from wsgate import topics
from wsgate.broker import Broker, Presence
from wsgate.errors import ConnectionLost, NotConnected, RemoteError, RequestTimeout
from wsgate.hub import ConnectionInfo
from wsgate.publication import Publication

__all__ = [
    "CallJob",
    "Deliver",
    "Envelope",
    "InfoQuery",
    "Kick",
    "PresenceQuery",
    "Request",
    "Response",
    "Router",
    "decode_envelope",
    "encode_envelope",
]

log = logging.getLogger("wsgate.cluster")

_PRESENCE_WAIT = 2.0
"""Seconds a cluster-wide presence query waits for the other nodes' answers."""
_LOCATED_MAX = 100_000
"""Connection locations a router remembers for requests before starting over."""


class _Envelope(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="k"):
    """Base of inter-process envelopes."""


class Deliver(_Envelope, frozen=True, tag="d"):
    """Push ``payload`` to these connections of the receiving node."""

    cids: list[str]
    payload: Any = None


class Request(_Envelope, frozen=True, tag="q"):
    """Send a server request to connection ``cid`` and answer ``reply_to`` with a Response."""

    cid: str
    rid: int
    reply_to: str
    timeout: float
    payload: Any = None


class Response(_Envelope, frozen=True, tag="r"):
    """The answer to a Request, InfoQuery or PresenceQuery (``error`` set on failure)."""

    rid: int
    payload: Any = None
    error: str | None = None
    message: str = ""
    data: Any = None


class Kick(_Envelope, frozen=True, tag="x"):
    """Close connection ``cid`` (only the instance with ``token``, when given)."""

    cid: str
    code: int
    reason: str = ""
    token: str | None = None


class InfoQuery(_Envelope, frozen=True, tag="i"):
    """Ask for a connection's info; answered with a Response holding it (or None)."""

    cid: str
    rid: int
    reply_to: str


class PresenceQuery(_Envelope, frozen=True, tag="p"):
    """Ask for the node's connections subscribed to ``topic``; answered with a list."""

    topic: str
    rid: int
    reply_to: str


class StatsQuery(_Envelope, frozen=True, tag="s"):
    """Ask for the node's counters and gauges; answered with its stats map."""

    rid: int
    reply_to: str


class CallJob(_Envelope, frozen=True, tag="c"):
    """A client call for a backend worker; answered to ``reply_to`` with a Response.

    ``deadline`` is unix time (the caller's clock): after it nobody waits for
    the answer, so a worker skips the job.
    """

    method: str
    cid: str
    rid: int
    reply_to: str
    deadline: float
    payload: Any = None
    user: str | None = None
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


Envelope = Deliver | Request | Response | Kick | InfoQuery | PresenceQuery | StatsQuery | CallJob

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)

# Error names a Response carries, and the exception each becomes at the requester.
NOT_CONNECTED = "not_connected"
TIMEOUT = "timeout"
CONNECTION_LOST = "connection_lost"


def encode_envelope(envelope: Envelope) -> bytes:
    """Serialize an envelope (raises TypeError for unencodable payloads)."""
    try:
        return _encoder.encode(envelope)
    except msgspec.EncodeError as exc:
        raise TypeError(f"payload cannot be encoded: {exc}") from exc


def decode_envelope(data: bytes) -> Envelope | None:
    """Deserialize an envelope; None (logged) when it is not one."""
    try:
        envelope: Envelope = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("undecodable envelope skipped: %s", exc)
        return None
    return envelope


def info_to_payload(info: ConnectionInfo) -> Any:
    """A ConnectionInfo as plain data for an envelope."""
    return msgspec.to_builtins(info)


def info_from_payload(payload: Any) -> ConnectionInfo:
    """The ConnectionInfo carried by an envelope."""
    return msgspec.convert(payload, ConnectionInfo)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Router:
    """Backend verbs addressed through the broker and presence.

    Args:
        broker: the started broker of this process.
        presence: the started presence of this process.
        inbox: this process's inbox id (a node's id, or a backend's).
        request_timeout: default seconds for :meth:`request`.
    """

    def __init__(
        self, broker: Broker, presence: Presence, inbox: str, *, request_timeout: float = 10.0
    ) -> None:
        self.broker = broker
        self.presence = presence
        self.inbox = inbox
        self.request_timeout = request_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Response]] = {}
        # Connection id -> the node that held it when last asked. Requests go
        # straight to that node's inbox; a node answering "not here" (or gone)
        # makes the router ask presence again (see request()).
        self._located: dict[str, str] = {}
        self.late_responses = 0

    @property
    def in_flight(self) -> int:
        """Requests and queries awaiting their Response."""
        return len(self._pending)

    # -- the verbs --------------------------------------------------------------------

    async def publish(self, topic: str, data: Any) -> None:
        """Publish to every subscriber of ``topic`` on every node."""
        topics.validate_topic(topic)
        await self.broker.publish(Publication(topic, data))

    async def broadcast(self, data: Any) -> None:
        """Send ``data`` to every connection of every node."""
        await self.broker.broadcast(data)

    async def send(self, connection_id: str, data: Any) -> bool:
        """Push ``data`` to one connection; True when a live node holding it got it."""
        where = await self.presence.locate(connection_id)
        if where is None:
            return False
        return await self.broker.send_direct(
            where.node, encode_envelope(Deliver([connection_id], data))
        )

    async def send_to_user(self, user: str, data: Any, *, skip_node: str | None = None) -> int:
        """Push ``data`` to every connection of ``user``; returns how many were reached."""
        by_node: dict[str, list[str]] = {}
        for where in await self.presence.locate_user(user):
            if where.node != skip_node:
                by_node.setdefault(where.node, []).append(where.connection_id)
        reached = 0
        for node, cids in by_node.items():
            if await self.broker.send_direct(node, encode_envelope(Deliver(cids, data))):
                reached += len(cids)
        return reached

    async def request(self, connection_id: str, data: Any, timeout: float | None = None) -> Any:
        """Send a request to a connection on any node and await its reply.

        Raises:
            NotConnected: no live node holds the connection.
            RequestTimeout: no reply within ``timeout``.
            RemoteError: the client replied with an error.
            ConnectionLost: the connection closed before replying.
        """
        timeout = self.request_timeout if timeout is None else timeout
        node = self._located.get(connection_id)
        cached = node is not None
        if node is None:
            node = await self._locate(connection_id)
        response = await self._request_at(node, connection_id, data, timeout)
        if cached and (response is None or response.error == NOT_CONNECTED):
            # The cached node is gone or no longer holds the connection (it moved,
            # or was taken over): the request never reached a client, so asking
            # where it is now and trying once more cannot answer it twice.
            self._located.pop(connection_id, None)
            fresh = await self._locate(connection_id)
            if fresh != node:
                response = await self._request_at(fresh, connection_id, data, timeout)
        if response is None:
            self._located.pop(connection_id, None)
            raise NotConnected(connection_id)
        if response.error is None:
            return response.payload
        if response.error == NOT_CONNECTED:
            self._located.pop(connection_id, None)
            raise NotConnected(connection_id)
        if response.error == TIMEOUT:
            raise RequestTimeout(connection_id, timeout)
        if response.error == CONNECTION_LOST:
            raise ConnectionLost(connection_id)
        raise RemoteError(response.error, response.message, response.data)

    async def _locate(self, connection_id: str) -> str:
        """The node holding a connection, from presence (remembered for requests).

        Raises:
            NotConnected: presence knows no live connection with this id.
        """
        where = await self.presence.locate(connection_id)
        if where is None:
            raise NotConnected(connection_id)
        if len(self._located) >= _LOCATED_MAX:
            self._located.clear()  # a crude bound; misses only cost a lookup
        self._located[connection_id] = where.node
        return where.node

    async def _request_at(
        self, node: str, connection_id: str, data: Any, timeout: float
    ) -> Response | None:
        """One request through ``node``'s inbox; None when no live node reads that inbox.

        Raises:
            RequestTimeout: no response within ``timeout``.
        """
        rid, future = self._expect()
        # One timer instead of a timeout context: this is the hot path of requests.
        timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
        try:
            envelope = Request(connection_id, rid, self.inbox, timeout, data)
            if not await self.broker.send_direct(node, encode_envelope(envelope)):
                return None
            try:
                return await future
            except TimeoutError:
                raise RequestTimeout(connection_id, timeout) from None
        finally:
            timer.cancel()
            self._pending.pop(rid, None)

    async def disconnect(self, connection_id: str, code: int, reason: str) -> bool:
        """Close a connection on any node; True when a live node holding it got the order."""
        where = await self.presence.locate(connection_id)
        if where is None:
            return False
        kick = Kick(connection_id, code, reason)
        return await self.broker.send_direct(where.node, encode_envelope(kick))

    async def kick(self, where: Any, code: int, reason: str) -> None:
        """Close exactly the connection instance of a registration (takeover)."""
        kick = Kick(where.connection_id, code, reason, where.token)
        await self.broker.send_direct(where.node, encode_envelope(kick))

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """What the holding node knows about a connection, or None."""
        where = await self.presence.locate(connection_id)
        if where is None:
            return None
        rid, future = self._expect()
        try:
            query = InfoQuery(connection_id, rid, self.inbox)
            if not await self.broker.send_direct(where.node, encode_envelope(query)):
                return None
            async with asyncio.timeout(self.request_timeout):
                response = await future
        except TimeoutError:
            return None
        finally:
            self._pending.pop(rid, None)
        return None if response.payload is None else info_from_payload(response.payload)

    async def presence_of(
        self, topic: str, *, skip_node: str | None = None
    ) -> list[ConnectionInfo]:
        """Connections subscribed to ``topic`` on every live node (but ``skip_node``)."""
        topics.validate_topic(topic)
        answers = await self._ask_every_node(
            lambda rid: PresenceQuery(topic, rid, self.inbox), skip_node
        )
        return [info_from_payload(p) for payload in answers.values() for p in payload or ()]

    async def node_stats(self) -> dict[str, Any]:
        """Every live node's counters and gauges, by node id (nodes that did not answer
        within two seconds are missing)."""
        return await self._ask_every_node(lambda rid: StatsQuery(rid, self.inbox), None)

    async def _ask_every_node(
        self, build: Callable[[int], Envelope], skip_node: str | None
    ) -> dict[str, Any]:
        """Send a query to every live node; their answers' payloads by node id."""
        nodes = [n for n in await self.presence.nodes() if n != skip_node]
        asked: list[tuple[str, int, asyncio.Future[Response]]] = []
        try:
            for node in nodes:
                rid, future = self._expect()
                asked.append((node, rid, future))
                if not await self.broker.send_direct(node, encode_envelope(build(rid))):
                    future.cancel()
            futures = [f for _, _, f in asked if not f.cancelled()]
            if futures:
                await asyncio.wait(futures, timeout=_PRESENCE_WAIT)
        finally:
            for _, rid, _ in asked:
                self._pending.pop(rid, None)
        return {
            node: future.result().payload
            for node, _, future in asked
            if future.done() and not future.cancelled()
        }

    # -- responses --------------------------------------------------------------------

    @contextlib.contextmanager
    def expecting(self) -> Iterator[tuple[int, asyncio.Future[Response]]]:
        """A fresh correlation id and the future its Response resolves, while in the block.

        Send something carrying the id with ``reply_to`` set to :attr:`inbox`;
        once the block ends, a Response for the id is dropped as late.
        """
        rid, future = self._expect()
        try:
            yield rid, future
        finally:
            self._pending.pop(rid, None)

    def on_response(self, response: Response) -> None:
        """Resolve the waiting request; a response nobody waits for is dropped."""
        future = self._pending.get(response.rid)
        if future is None or future.done():
            self.late_responses += 1
            return
        future.set_result(response)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiting request (shutdown)."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)

    def _expect(self) -> tuple[int, asyncio.Future[Response]]:
        rid = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        return rid, future
