"""The node: composition root of one gateway process.

A :class:`Node` owns the :class:`~wsgate.hub.Hub` (this node's connections),
the broker (how nodes reach each other) and the authenticator. It offers the
backend verbs (``publish``, ``send``, ``send_to_user``, ``broadcast``,
``request``, ``disconnect``, ``connection_info``, ``presence``, ``stats``) and
serves client messages handed over by the server layer.

The node never touches sockets: a connection is anything implementing
:class:`~wsgate.hub.ClientConnection`. Fan-out encodes a message once per
encoding and queues the same bytes on every connection (``deliver`` never
blocks), so one slow client never delays the next.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from wsgate import topics
from wsgate.auth import (
    AnonymousAuthenticator,
    Authenticator,
    AuthRequest,
    ChainAuthenticator,
    Identity,
    JWTAuthenticator,
)
from wsgate.broker import Broker, Presence, Registration, create_broker, create_presence
from wsgate.calls import CallContext, Calls, MethodHandler, answer_error, answer_ok
from wsgate.cluster import (
    CONNECTION_LOST,
    NOT_CONNECTED,
    TIMEOUT,
    Deliver,
    InfoQuery,
    Kick,
    PresenceQuery,
    Request,
    Response,
    Router,
    StatsQuery,
    decode_envelope,
    encode_envelope,
    info_to_payload,
)
from wsgate.config import Config, load_config
from wsgate.errors import (
    BrokerError,
    ConfigError,
    ConnectionLost,
    InvalidState,
    InvalidTopic,
    RemoteError,
    RequestTimeout,
)
from wsgate.hub import ClientConnection, ConnectionInfo, Hub
from wsgate.metrics import Metrics
from wsgate.protocol.codec import DEFAULT_CODEC
from wsgate.protocol.codes import CloseCode, ErrorCode, is_sendable
from wsgate.protocol.messages import (
    Call,
    ClientMessage,
    Ping,
    Pong,
    Pub,
    Push,
    Reply,
    Req,
    Sub,
    Unsub,
    Welcome,
    payload_fields,
    payload_of,
)
from wsgate.publication import Encoded, Publication

__all__ = ["CallContext", "MethodHandler", "Node"]  # the first two live in wsgate.calls

log = logging.getLogger("wsgate.node")

_T = TypeVar("_T")


YIELD_AFTER_DELIVERIES = 32_768
"""Deliveries queued by publications before :meth:`Node.publish` yields to the loop."""


def build_authenticator(config: Config) -> Authenticator:
    """The authenticator a configuration asks for.

    Raises:
        ConfigError: no secret, no key and no anonymous access: nobody could connect.
    """
    auth = config.auth
    chain: list[Authenticator] = []
    if auth.jwt_secret or auth.jwt_public_key:
        public_key = auth.jwt_public_key
        if public_key and public_key.startswith("@"):
            try:
                with open(public_key[1:], encoding="utf-8") as fh:
                    public_key = fh.read()
            except OSError as exc:
                raise ConfigError(f"cannot read jwt_public_key file: {exc}") from exc
        algorithms = auth.jwt_algorithms or (("HS256",) if auth.jwt_secret else ("RS256", "ES256"))
        chain.append(
            JWTAuthenticator(
                secret=auth.jwt_secret,
                public_key=public_key,
                algorithms=algorithms,
                audience=auth.jwt_audience,
                issuer=auth.jwt_issuer,
            )
        )
    if auth.anonymous:
        chain.append(
            AnonymousAuthenticator(
                subscribe=auth.anonymous_subscribe,
                publish=auth.anonymous_publish,
                call=auth.anonymous_call,
            )
        )
    if not chain:
        raise ConfigError(
            "no authentication configured: set WSGATE_JWT_SECRET (or auth.jwt_secret), "
            "a public key, or allow anonymous access explicitly (--anonymous)"
        )
    return chain[0] if len(chain) == 1 else ChainAuthenticator(*chain)


class Node:
    """One gateway node.

    Args:
        config: the configuration (defaults to :func:`~wsgate.config.load_config`).
        authenticator: overrides the one built from ``config.auth``.
        broker: overrides the one built from ``config.broker``.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        authenticator: Authenticator | None = None,
        broker: Broker | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        self.id = self.config.node_id
        self.authenticator = (
            authenticator if authenticator is not None else build_authenticator(self.config)
        )
        self.broker = (
            broker
            if broker is not None
            else create_broker(self.config.broker.broker, prefix=self.config.broker.prefix)
        )
        cluster = self.config.broker
        self.presence_backend = (
            presence
            if presence is not None
            else create_presence(
                cluster.broker, prefix=cluster.prefix, lease=cluster.presence_lease
            )
        )
        self.router = Router(
            self.broker,
            self.presence_backend,
            self.id,
            request_timeout=self.config.limits.request_timeout,
        )
        self._registrations: dict[ClientConnection, Registration] = {}
        self.hub = Hub(self.id)
        self.metrics = Metrics()
        self.metrics.add_gauge("connections", lambda: len(self.hub))
        self.metrics.add_gauge("users", self.hub.users)
        self.metrics.add_gauge("patterns", lambda: len(self.hub.patterns()))
        self.metrics.add_gauge("requests_in_flight", lambda: len(self._requests))
        self._requests: dict[int, tuple[ClientConnection, asyncio.Future[Any]]] = {}
        self._request_ids = itertools.count(1)
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queued_since_yield = 0
        self.calls = Calls(
            self.config.limits, self.metrics, self.broker, self.router, spawn=self._spawn
        )
        self._started = False
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the broker; idempotent."""
        if self._started:
            return
        await self.broker.start(self.id, self)
        await self.presence_backend.start(self.id)
        self._started = True

    async def stop(self) -> None:
        """Close every connection (``4001 SHUTDOWN``), fail pending work, close the broker."""
        if self._closing:
            return
        self._closing = True
        for conn in self.hub:
            conn.close(CloseCode.SHUTDOWN, "node shutting down")
        for conn, future in list(self._requests.values()):
            if not future.done():
                future.set_exception(ConnectionLost(conn.id))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.router.fail_all(ConnectionLost("(node shutting down)"))
        await self.presence_backend.close()
        await self.broker.close()
        self._started = False

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def closing(self) -> bool:
        """True once :meth:`stop` has begun."""
        return self._closing

    # -- backend verbs ----------------------------------------------------------------

    async def publish(self, topic: str, data: Any) -> None:
        """Publish to every subscriber of ``topic``, wildcard subscriptions included.

        At most once: subscribers that are not connected now do not get it later.

        Raises:
            InvalidTopic: ``topic`` is not a concrete, well-formed topic.
            TypeError: ``data`` cannot be encoded.
            BrokerError: the broker could not take it; this node's own subscribers
                got it, other nodes' did not (counted in ``broker_errors``).
        """
        topics.validate_topic(topic)
        publication = Publication(topic, data)
        publication.frame(DEFAULT_CODEC)  # fail here, not in the middle of fan-out
        self.metrics.publications += 1
        try:
            await self.broker.publish(publication)
        except BrokerError as exc:
            # Local subscribers still get it; other nodes could not, and the caller is told.
            self.on_publication(publication)
            self.metrics.broker_errors += 1
            log.warning("publication to %s reached this node only: %s", topic, exc)
            raise
        if self._queued_since_yield >= YIELD_AFTER_DELIVERIES:
            # A publisher in this process that never waits (the memory broker delivers
            # synchronously) would queue its whole burst before one byte is written:
            # let the loop flush the queues now and then, so writing overlaps publishing.
            self._queued_since_yield = 0
            await asyncio.sleep(0)

    async def send(self, connection_id: str, data: Any) -> bool:
        """Send ``data`` to one connection on any node.

        Returns:
            True when it was queued to a live connection (here) or handed to the
            live node holding it; False when no live connection has the id.
        """
        conn = self.hub.get(connection_id)
        encoded = Encoded(Push(*payload_fields(data)))
        if conn is not None:
            return self._deliver(conn, encoded)
        encoded.frame(DEFAULT_CODEC)  # validate before it leaves the process
        return await self.router.send(connection_id, data)

    async def send_to_user(self, user: str, data: Any) -> int:
        """Send ``data`` to every connection of ``user`` on every node; returns how many."""
        encoded = Encoded(Push(*payload_fields(data)))
        encoded.frame(DEFAULT_CODEC)
        local = sum(self._deliver(conn, encoded) for conn in self.hub.of_user(user))
        return local + await self.router.send_to_user(user, data, skip_node=self.id)

    async def broadcast(self, data: Any) -> None:
        """Send ``data`` to every connection of the gateway."""
        Encoded(Push(*payload_fields(data))).frame(DEFAULT_CODEC)  # validate early
        try:
            await self.broker.broadcast(data)
        except BrokerError as exc:
            self.on_broadcast(data)
            self.metrics.broker_errors += 1
            log.warning("broadcast reached this node only: %s", exc)
            raise

    async def request(self, connection_id: str, data: Any, timeout: float | None = None) -> Any:
        """Send a request to one connection and await its reply.

        Many requests may be in flight per connection; each reply is matched by
        its id, and a reply arriving after its request ended is dropped.

        Returns:
            The reply payload (bytes when the client replied with ``bin``).

        Raises:
            NotConnected: no live connection has this id.
            RequestTimeout: no reply within ``timeout`` (default ``request_timeout``).
            RemoteError: the client replied with an error.
            ConnectionLost: the connection closed before replying.
        """
        conn = self.hub.get(connection_id)
        if conn is None:
            return await self.router.request(connection_id, data, timeout)
        return await self._start_request(conn, data, timeout)

    def _start_request(
        self, conn: ClientConnection, data: Any, timeout: float | None
    ) -> asyncio.Future[Any]:
        """Send ``req`` to a local connection; the future resolves with its reply.

        It fails with RemoteError (the client answered an error), RequestTimeout
        or ConnectionLost (see :meth:`_forget`). One timer, no task: remote
        requests are served by callbacks alone (:meth:`_serve_request`).
        """
        timeout = self.config.limits.request_timeout if timeout is None else timeout
        request_id = next(self._request_ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        frame = conn.codec.encode(Req(request_id, *payload_fields(data)))  # TypeError: caller's
        self._requests[request_id] = (conn, future)
        conn.pending_requests.add(request_id)
        timer = loop.call_later(timeout, self._request_timed_out, future, conn.id, timeout)
        future.add_done_callback(functools.partial(self._request_ended, conn, request_id, timer))
        self.metrics.requests_sent += 1
        conn.deliver(frame)
        return future

    def _request_timed_out(self, future: asyncio.Future[Any], cid: str, timeout: float) -> None:
        if not future.done():
            self.metrics.request_timeouts += 1
            future.set_exception(RequestTimeout(cid, timeout))

    def _request_ended(
        self,
        conn: ClientConnection,
        request_id: int,
        timer: asyncio.TimerHandle,
        _future: asyncio.Future[Any],
    ) -> None:
        timer.cancel()
        self._requests.pop(request_id, None)
        conn.pending_requests.discard(request_id)

    async def disconnect(
        self, connection_id: str, code: int = CloseCode.DISCONNECTED, reason: str = ""
    ) -> bool:
        """Close one connection; True when it was connected.

        Args:
            code: a close code; backends should use 4500-4999 for their own reasons.
            reason: shown to the client (at most 120 characters are sent).

        Raises:
            InvalidState: ``code`` cannot be sent in a close frame (RFC 6455 section 7.4).
        """
        if not is_sendable(code):
            raise InvalidState(f"close code {code} cannot be sent in a close frame")
        conn = self.hub.get(connection_id)
        if conn is None:
            return await self.router.disconnect(connection_id, code, reason[:120])
        conn.close(code, reason[:120])
        return True

    async def connection_info(self, connection_id: str) -> ConnectionInfo | None:
        """What is known about a connection, or None when it is not connected."""
        conn = self.hub.get(connection_id)
        if conn is None:
            return await self.router.connection_info(connection_id)
        return self.hub.info(conn)

    async def presence(self, topic: str) -> list[ConnectionInfo]:
        """Every connection, on every node, that would receive a publication on ``topic``."""
        topics.validate_topic(topic)
        local = [self.hub.info(conn) for conn in self.hub.subscribers(topic)]
        return local + await self.router.presence_of(topic, skip_node=self.id)

    async def stats(self) -> dict[str, Any]:
        """Counters and gauges of this node."""
        return {"node": self.id, **self.metrics.snapshot()}

    # -- client methods ---------------------------------------------------------------

    def method(self, name: str) -> Callable[[MethodHandler], MethodHandler]:
        """Decorator registering an in-process handler for client ``call``s of ``name``."""
        return self.calls.method(name)

    def register_method(self, name: str, handler: MethodHandler) -> None:
        """Register ``handler`` for ``call``s of ``name`` (see :meth:`Calls.register_method`)."""
        self.calls.register_method(name, handler)

    # -- broker events ----------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        """Fan a publication out to this node's subscribers (called by the broker)."""
        self._fan_out(self.hub.subscribers(publication.topic), publication)

    def on_broadcast(self, payload: Any) -> None:
        """Send a broadcast to every connection of this node (called by the broker)."""
        self._fan_out(self.hub, Encoded(Push(*payload_fields(payload))))

    def _fan_out(self, conns: Iterable[ClientConnection], message: Publication | Encoded) -> None:
        """Queue one message, encoded once per codec, on many connections."""
        delivered = 0
        for conn in conns:
            try:
                frame = message.frame(conn.codec)
            except TypeError:
                self.metrics.encode_errors += 1
                continue
            conn.deliver_fanout(frame)
            delivered += 1
        self.metrics.messages_delivered += delivered
        self._queued_since_yield += delivered

    # -- connections (called by the server layer) -------------------------------------

    async def authenticate(self, request: AuthRequest) -> Identity:
        """Authenticate a connection attempt (raises AuthError)."""
        return await self.authenticator.authenticate(request)

    async def attach(self, conn: ClientConnection) -> None:
        """Register an authenticated connection, cluster-wide, and greet it.

        Takes over any older connection with the same id, here or on another
        node (it is closed with ``4103 TAKEN_OVER``), makes the identity's
        default subscriptions, and queues ``welcome`` once the connection is
        addressable from every node and its default subscriptions are active.
        """
        previous = self.hub.add(conn)
        if previous is not None:
            self.metrics.takeovers += 1
            log.info("connection %s taken over by a newer connection", conn.id)
            # The old one's cleanup only removes its own entries (compare-and-delete).
            self._forget(previous)
            previous.close(CloseCode.TAKEN_OVER, "taken over by a newer connection")
        self.metrics.connections_accepted += 1
        registration = Registration(conn.id, self.id, conn.user, secrets.token_hex(8))
        self._registrations[conn] = registration
        pending = [self._subscribe_local(conn, pattern) for pattern in conn.identity.channels]
        replaced = await self.presence_backend.register(registration)
        if replaced is not None and replaced.node != self.id:
            self.metrics.takeovers += 1
            log.info("connection %s taken over from node %s", conn.id, replaced.node)
            try:
                await self.router.kick(
                    replaced, CloseCode.TAKEN_OVER, "taken over by a newer connection"
                )
            except BrokerError as exc:
                log.warning("could not close the replaced connection %s: %s", conn.id, exc)
        waits = [asyncio.shield(future) for future in pending if future is not None]
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("default subscription of %s failed: %s", conn.id, outcome)
        if self.hub.get(conn.id) is not conn:
            return  # taken over while registering: no welcome
        conn.deliver(
            conn.codec.encode(
                Welcome(
                    cid=conn.id,
                    node=self.id,
                    user=conn.user,
                    subs=tuple(sorted(conn.subscriptions)),
                    ping_interval=self.config.keepalive.ping_interval,
                )
            )
        )

    def reauthenticate(
        self, conn: ClientConnection, identity: Identity, request_id: int | None
    ) -> None:
        """Apply a new identity from an ``auth`` on an open connection.

        Allowed: a fresh token for the same user (refresh: new expiry and grants),
        or a first user token on an anonymous connection. The connection keeps
        its id; subscriptions the new grants no longer cover are dropped.
        """
        if conn.user is not None and identity.user != conn.user:
            self._error(conn, request_id, ErrorCode.PERMISSION_DENIED, "token is for another user")
            return
        if identity.connection_id is not None and identity.connection_id != conn.id:
            self._error(
                conn, request_id, ErrorCode.PERMISSION_DENIED, "token claims another connection id"
            )
            return
        old_user = conn.user
        self.hub.change_identity(conn, identity)
        registration = self._registrations.get(conn)
        if registration is not None and identity.user != old_user:
            registration = Registration(conn.id, self.id, identity.user, registration.token)
            self._registrations[conn] = registration
            self._spawn(self.presence_backend.register(registration))
        for pattern in [p for p in conn.subscriptions if not identity.can_subscribe(p)]:
            if self.hub.unsubscribe(conn, pattern):
                self._spawn(self._broker_unsubscribe(pattern))
        for pattern in identity.channels:
            if pattern not in conn.subscriptions:
                self._subscribe_local(conn, pattern)
        self._ok(conn, request_id, {"user": identity.user, "subs": sorted(conn.subscriptions)})

    def detach(self, conn: ClientConnection) -> None:
        """Forget a connection that closed; fail its in-flight requests."""
        self._forget(conn)

    def new_connection_id(self) -> str:
        """A fresh server-assigned connection id (unguessable, unique across nodes).

        Hex only: safe in URLs, shells and command lines (never starts with ``-``).
        """
        return secrets.token_hex(10)

    def handle(self, conn: ClientConnection, message: ClientMessage) -> None:
        """Act on one valid message from an authenticated client."""
        self.metrics.messages_received += 1
        if isinstance(message, Reply):
            self._on_reply(conn, message)
        elif isinstance(message, Sub):
            self._on_sub(conn, message)
        elif isinstance(message, Unsub):
            self._on_unsub(conn, message)
        elif isinstance(message, Pub):
            self._on_pub(conn, message)
        elif isinstance(message, Call):
            self.calls.handle(conn, message)
        elif isinstance(message, Ping):
            conn.deliver(conn.codec.encode(Pong(id=message.id)))

    # -- internals --------------------------------------------------------------------

    def _deliver(self, conn: ClientConnection, encoded: Encoded) -> bool:
        try:
            frame = encoded.frame(conn.codec)
        except TypeError:
            self.metrics.encode_errors += 1
            return False
        conn.deliver(frame)
        self.metrics.messages_delivered += 1
        return True

    def _forget(self, conn: ClientConnection) -> None:
        registration = self._registrations.pop(conn, None)
        if registration is not None:
            self._spawn(self._unregister(registration))
        for pattern in self.hub.remove(conn):
            self._spawn(self._broker_unsubscribe(pattern))
        for request_id in list(conn.pending_requests):
            entry = self._requests.get(request_id)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(ConnectionLost(conn.id))
        conn.pending_requests.clear()

    async def _unregister(self, registration: Registration) -> None:
        await self.presence_backend.unregister(registration)
        # A newer local connection with the same id may have registered before this
        # one's registration landed; make sure the cluster points at the live one.
        current = self.hub.get(registration.connection_id)
        current_registration = None if current is None else self._registrations.get(current)
        if current_registration is not None:
            await self.presence_backend.register(current_registration)

    # -- inbox (direct traffic from other processes) ----------------------------------

    def on_direct(self, data: bytes) -> None:
        """Act on an envelope sent to this node's inbox (called by the broker)."""
        envelope = decode_envelope(data)
        if envelope is None:
            return
        if isinstance(envelope, Response):
            self.router.on_response(envelope)
        elif isinstance(envelope, Deliver):
            encoded = Encoded(Push(*payload_fields(envelope.payload)))
            for cid in envelope.cids:
                conn = self.hub.get(cid)
                if conn is not None:
                    self._deliver(conn, encoded)
        elif isinstance(envelope, Request):
            self._serve_request(envelope)
        elif isinstance(envelope, Kick):
            self._on_kick(envelope)
        elif isinstance(envelope, InfoQuery):
            conn = self.hub.get(envelope.cid)
            info = None if conn is None else info_to_payload(self.hub.info(conn))
            self._respond(envelope.reply_to, Response(envelope.rid, info))
        elif isinstance(envelope, StatsQuery):
            self._respond(
                envelope.reply_to,
                Response(envelope.rid, {"node": self.id, **self.metrics.snapshot()}),
            )
        elif isinstance(envelope, PresenceQuery):
            infos = [
                info_to_payload(self.hub.info(c)) for c in self.hub.subscribers(envelope.topic)
            ]
            self._respond(envelope.reply_to, Response(envelope.rid, infos))

    def _on_kick(self, kick: Kick) -> None:
        conn = self.hub.get(kick.cid)
        if conn is None:
            return
        registration = self._registrations.get(conn)
        if kick.token is not None and (registration is None or registration.token != kick.token):
            return  # meant for an instance that is already gone
        if kick.code == CloseCode.TAKEN_OVER:
            log.info("connection %s taken over by a connection on another node", conn.id)
        conn.close(kick.code, kick.reason)

    def _serve_request(self, request: Request) -> None:
        """Relay a request from another process to a local connection; answer its inbox."""
        conn = self.hub.get(request.cid)
        if conn is None:
            self._respond(request.reply_to, Response(request.rid, error=NOT_CONNECTED))
            return
        try:
            future = self._start_request(conn, request.payload, request.timeout)
        except TypeError:
            self.metrics.encode_errors += 1
            message = "the request cannot be encoded for this connection's codec"
            error = Response(request.rid, error=ErrorCode.BAD_REQUEST, message=message)
            self._respond(request.reply_to, error)
            return
        future.add_done_callback(functools.partial(self._request_answered, request))

    def _request_answered(self, request: Request, future: asyncio.Future[Any]) -> None:
        rid = request.rid
        if future.cancelled():
            response = Response(rid, error=CONNECTION_LOST)
        elif (exc := future.exception()) is None:
            response = Response(rid, future.result())
        elif isinstance(exc, RequestTimeout):
            response = Response(rid, error=TIMEOUT)
        elif isinstance(exc, RemoteError):
            response = Response(rid, error=exc.code, message=exc.remote_message, data=exc.data)
        else:  # ConnectionLost, or the node stopping
            response = Response(rid, error=CONNECTION_LOST)
        self._respond(request.reply_to, response)

    def _respond(self, inbox: str, response: Response) -> None:
        self._spawn(self._send_response(inbox, response))

    async def _send_response(self, inbox: str, response: Response) -> None:
        try:
            await self.broker.send_direct(inbox, encode_envelope(response))
        except BrokerError as exc:
            log.warning("could not answer %s: %s", inbox, exc)

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _error(self, conn: ClientConnection, request_id: int | None, code: str, msg: str) -> None:
        answer_error(conn, request_id, code, msg)

    def _ok(self, conn: ClientConnection, request_id: int | None, data: Any = None) -> None:
        answer_ok(conn, request_id, data, self.metrics)

    def _on_reply(self, conn: ClientConnection, message: Reply) -> None:
        entry = self._requests.get(message.id)
        if entry is None or entry[0] is not conn or entry[1].done():
            # Late, duplicate or foreign: never hand it to another caller.
            self.metrics.late_replies += 1
            return
        future = entry[1]
        if message.error is not None:
            err = message.error
            future.set_exception(RemoteError(err.code, err.message, err.data))
        else:
            future.set_result(payload_of(message))

    def _check_pattern(self, conn: ClientConnection, request_id: int, pattern: str) -> bool:
        try:
            topics.validate_pattern(pattern)
        except InvalidTopic as exc:
            self._error(conn, request_id, ErrorCode.INVALID_TOPIC, str(exc))
            return False
        return True

    def _on_sub(self, conn: ClientConnection, message: Sub) -> None:
        pattern = message.topic
        if not self._check_pattern(conn, message.id, pattern):
            return
        if not conn.identity.can_subscribe(pattern):
            self._error(
                conn, message.id, ErrorCode.PERMISSION_DENIED, f"may not subscribe to {pattern}"
            )
            return
        if pattern in conn.subscriptions:
            self._ok(conn, message.id)
            return
        if len(conn.subscriptions) >= self.config.limits.max_subscriptions:
            self._error(
                conn,
                message.id,
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.config.limits.max_subscriptions} subscriptions",
            )
            return
        pending = self._subscribe_local(conn, pattern)
        if pending is None:
            self._ok(conn, message.id)
        else:
            self._spawn(self._ack_when_subscribed(conn, message.id, pattern, pending))

    def _subscribe_local(self, conn: ClientConnection, pattern: str) -> asyncio.Future[None] | None:
        """Subscribe in the hub; return a future while the broker subscription is pending."""
        if self.hub.subscribe(conn, pattern):
            future = asyncio.ensure_future(self.broker.subscribe(pattern))
            if future.done() and future.exception() is None:
                return None
            self._subscribing[pattern] = future
            future.add_done_callback(lambda _f: self._subscribing.pop(pattern, None))
            return future
        return self._subscribing.get(pattern)

    async def _ack_when_subscribed(
        self, conn: ClientConnection, request_id: int, pattern: str, pending: asyncio.Future[None]
    ) -> None:
        try:
            await asyncio.shield(pending)
        except Exception:
            log.exception("broker subscription to %s failed", pattern)
            if self.hub.unsubscribe(conn, pattern):
                self._spawn(self._broker_unsubscribe(pattern))
            self._error(conn, request_id, ErrorCode.INTERNAL, "subscription failed, retry later")
            return
        self._ok(conn, request_id)

    async def _broker_unsubscribe(self, pattern: str) -> None:
        pending = self._subscribing.get(pattern)
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        if pattern not in self.hub.patterns():
            await self.broker.unsubscribe(pattern)

    def _on_unsub(self, conn: ClientConnection, message: Unsub) -> None:
        if message.topic not in conn.subscriptions:
            self._error(
                conn, message.id, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {message.topic}"
            )
            return
        if self.hub.unsubscribe(conn, message.topic):
            self._spawn(self._broker_unsubscribe(message.topic))
        self._ok(conn, message.id)

    def _on_pub(self, conn: ClientConnection, message: Pub) -> None:
        try:
            topics.validate_topic(message.topic)
        except InvalidTopic as exc:
            self._error(conn, message.id, ErrorCode.INVALID_TOPIC, str(exc))
            return
        if not conn.identity.can_publish(message.topic):
            self._error(
                conn, message.id, ErrorCode.PERMISSION_DENIED, f"may not publish to {message.topic}"
            )
            return
        self._spawn(self._publish_for(conn, message))

    async def _publish_for(self, conn: ClientConnection, message: Pub) -> None:
        try:
            await self.publish(message.topic, payload_of(message))
        except Exception:
            log.exception("client publication to %s failed", message.topic)
            self._error(conn, message.id, ErrorCode.INTERNAL, "publication failed")
            return
        self._ok(conn, message.id)
