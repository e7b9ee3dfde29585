"""The Redis broker: nodes joined through Redis pub/sub (``redis://``, ``rediss://``).

Routing is by interest (names in :mod:`wsgate.broker.keys`)::

    publish(topic)  --PUBLISH {prefix}:t:{topic}-->  Redis
    subscribe("orders.eu.created")  SUBSCRIBE  {prefix}:t:orders.eu.created   (exact)
    subscribe("orders.*.created")   PSUBSCRIBE {prefix}:t:orders.*.created    (over-approximate)
    subscribe("orders.>")           PSUBSCRIBE {prefix}:t:orders.*            (over-approximate)

Redis only sends a node what matches one of its subscriptions, so a node with
no interested client gets no topic traffic. A glob matches more than its
pattern (Redis ``*`` crosses dots), so every arrival is checked with the
shared matcher (the node's patterns in a :class:`~wsgate.topics.TopicTrie`)
before its envelope is even decoded.

**Exactly once per node.** Redis sends one copy of a publication per matching
subscription of the connection (one ``message`` for the exact channel, one
``pmessage`` per matching glob). Each pattern maps to one subscription key
(``("c", channel)`` or ``("p", glob)``; several patterns may share a glob,
``a.*`` and ``a.>`` both use ``{prefix}:t:a.*``). A copy that arrived through
key K is delivered only when K is the *smallest* key among the keys of this
node's patterns matching the topic that are subscribed in Redis. That key is
one of the copies Redis sent (its glob matches the channel), so exactly one
copy is handed over, provided every copy of one publication is judged on the
same state. Two measures make it so:

* "subscribed in Redis" is the set of keys whose SUBSCRIBE/PSUBSCRIBE
  confirmation has been *read* and whose UNSUBSCRIBE confirmation has not:
  confirmations and messages share one ordered stream, and Redis writes all
  copies of one publication at once, so no confirmation falls between them;
* the patterns used to judge (the *view*) change only at a stream point too:
  every subscribe/unsubscribe is followed by a ``PING`` with a sequence number
  and takes effect in the view when its ``pong`` is read.

**Races, and what can happen.**

* :meth:`RedisBroker.subscribe` returns once Redis has confirmed (its ``pong``
  has been read): a publication made after it returns is delivered. One made
  concurrently may or may not be (at-most-once).
* :meth:`RedisBroker.unsubscribe` likewise returns once the view no longer has
  the pattern; publications already read before that point may still reach the
  handler while it runs (the node finds no subscriber for them).
* A topic matched by two patterns, one being added or removed, is delivered
  once (through the other pattern) whatever the interleaving.
* Subscribe and unsubscribe calls are serialized on one lock, so Redis sees
  them in call order.
* While Redis is unreachable, subscribe and unsubscribe only record the wish
  and return at once (nothing is delivered to anyone then); the reconnection
  subscribes exactly the recorded patterns.

**Outages.** One task reads the subscriber connection. When it fails (or a
``PING`` goes unanswered for ``command_timeout`` seconds, which catches
half-open connections), the task drops that connection, logs one WARNING,
and reconnects with exponential backoff and full jitter (cap
``reconnect_cap``), subscribing again every channel and pattern it wants,
then logs one INFO. It does not rely on redis-py's own re-subscription
(``PubSub.on_connect`` replays the PubSub's channel table, which differs
between redis-py releases and can replay an unsubscribe whose confirmation
was never read): it discards the connection and builds a new one from its own
state. Publications sent during the outage are lost (at-most-once);
:meth:`RedisBroker.publish` raises :class:`~wsgate.errors.BrokerError` with
``temporary=True`` meanwhile.

**Node ids.** Each node subscribes to its inbox channel; :meth:`start` refuses a
node id whose inbox already has a subscriber on this Redis and prefix. That is
a check, not a lock: two nodes starting at the same instant can both pass.

**Hot path.** ``PUBLISH`` (topics, inboxes, replies) and the subscriber
stream use the lean connections of :mod:`wsgate.broker.redis_wire`: publishes
issued in one event-loop tick leave pipelined in one write, and every message
read is dispatched at once, without an await per message. redis-py serves the
rest (presence, calls, the node id check).

**Calls for workers** (:meth:`RedisBroker.enqueue_call`,
:meth:`RedisBroker.serve_calls`) use streams and the command connections, not
pub/sub; see :mod:`wsgate.broker.redis_calls`.

**Envelope.** Between nodes a publication travels as MessagePack
``[topic, payload]`` (broadcasts with topic ``""``): bytes stay bytes,
JSON-compatible values stay values. An undecodable message is counted
(:attr:`RedisBrokerStats.decode_errors`), logged, and skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsgate.broker import keys
from wsgate.broker.base import CALLS_IN_FLIGHT, BrokerHandler, CallHandler
from wsgate.broker.redis_calls import RedisCalls
from wsgate.broker.redis_url import check_redis_target
from wsgate.broker.redis_wire import CommandConnection, RedisTarget, SubscriberConnection
from wsgate.errors import BrokerError, ConfigError, InvalidState
from wsgate.publication import Publication
from wsgate.topics import TopicTrie, is_pattern, validate_pattern

__all__ = ["RedisBroker", "RedisBrokerStats"]

log = logging.getLogger("wsgate.broker.redis")

RECONNECT_BASE: Final = 0.1
"""Upper bound (s) of the first reconnection delay; it doubles per failed attempt."""
RECONNECT_CAP: Final = 5.0
"""Largest reconnection delay (s)."""
COMMAND_TIMEOUT: Final = 5.0
"""How long (s) a command or a subscription confirmation may take before the
connection is considered broken."""
CONNECT_TIMEOUT: Final = 2.0
"""TCP connect timeout (s), unless the URL sets ``socket_connect_timeout``."""
POLL_INTERVAL: Final = 1.0
"""How often (s), at most, the idle reader wakes up to check its health."""
HEALTH_INTERVAL: Final = 10.0
"""After this long (s) without traffic the reader sends a ``PING``."""

_CHANNEL: Final = "c"
_GLOB: Final = "p"
_BARRIER: Final = b"wsgate-barrier:"
_YIELD_EVERY: Final = 256  # messages read in a row before letting other tasks run
# Confirmation message type -> (now subscribed?, kind of key).
_CONFIRMATIONS: Final = {
    b"subscribe": (True, _CHANNEL),
    b"psubscribe": (True, _GLOB),
    b"unsubscribe": (False, _CHANNEL),
    b"punsubscribe": (False, _GLOB),
}

_Key = tuple[str, str]
"""A subscription in Redis: (``"c"``, channel) or (``"p"``, glob)."""
_Change = tuple[Literal["add", "remove"], str, _Key]


class _Envelope(msgspec.Struct, array_like=True, frozen=True):
    """A publication between nodes: ``[topic, payload]`` in MessagePack."""

    topic: str
    payload: Any


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(_Envelope)


def _encode(topic: str, payload: Any) -> bytes:
    if isinstance(payload, bytearray | memoryview):
        payload = bytes(payload)
    try:
        return _encoder.encode(_Envelope(topic, payload))
    except (TypeError, OverflowError) as exc:
        raise TypeError(f"payload cannot be sent through Redis: {exc}") from exc


@dataclass(slots=True)
class RedisBrokerStats:
    """Counters of one Redis broker (monotonic, since its creation)."""

    received: int = 0
    """Topic messages read from Redis, before any filtering."""
    delivered: int = 0
    """Publications handed to the handler."""
    filtered: int = 0
    """Arrivals matching none of this node's patterns (a glob over-approximates)."""
    duplicates: int = 0
    """Extra copies of a publication matched by several of this node's patterns."""
    broadcasts: int = 0
    """Broadcasts handed to the handler."""
    direct: int = 0
    """Inbox (direct) messages handed to the handler."""
    decode_errors: int = 0
    """Messages whose envelope could not be decoded (skipped)."""
    handler_errors: int = 0
    """Exceptions raised by the handler (logged, the reader goes on)."""
    reconnects: int = 0
    """Successful reconnections after a lost connection."""


@dataclass(slots=True)
class _Barrier:
    """A ``PING`` sent after a subscription change; the change applies at its ``pong``."""

    seq: int
    change: _Change | None
    future: asyncio.Future[None]
    sent_at: float = field(default_factory=time.monotonic)


class _Stalled(Exception):
    """The subscriber connection must be rebuilt although no I/O call failed."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


class RedisBroker:
    """A broker joining nodes through one Redis server.

    Args:
        url: ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS)
            or ``unix:///path``; query options go to redis-py and win over the
            defaults here (e.g. ``?socket_connect_timeout=5``).
        prefix: prefix of every channel name (see :mod:`wsgate.broker.keys`).
        reconnect_base: first reconnection delay bound (s).
        reconnect_cap: largest reconnection delay (s).
        command_timeout: socket timeout of commands, and how long a ``PING`` on
            the subscriber connection may go unanswered (s).
        health_interval: idle time (s) after which the reader sends a ``PING``.

    Raises:
        ConfigError: the URL or the prefix is unusable.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = keys.DEFAULT_PREFIX,
        reconnect_base: float = RECONNECT_BASE,
        reconnect_cap: float = RECONNECT_CAP,
        command_timeout: float = COMMAND_TIMEOUT,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        where = check_redis_target(url, prefix)
        self._url = url
        self._where = where
        try:
            self._target = RedisTarget.from_url(url, CONNECT_TIMEOUT)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL: {exc}") from exc
        self._prefix = prefix
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._command_timeout = command_timeout
        self._health_interval = health_interval
        # The idle reader wakes up often enough to honour both intervals.
        self._poll_interval = min(POLL_INTERVAL, health_interval / 2, command_timeout / 2)
        self._topic_start = keys.topic_channel_prefix(prefix)
        self._broadcast = keys.broadcast_channel(prefix)
        self._broadcast_bytes = self._broadcast.encode()
        self._inbox_bytes = b""
        self._client_name = "wsgate"
        self.stats = RedisBrokerStats()
        self._calls = RedisCalls(
            self._command_client,
            prefix,
            self._where,
            reconnect_base=reconnect_base,
            reconnect_cap=reconnect_cap,
        )

        self._redis: Redis | None = None
        self._pubsub: SubscriberConnection | None = None
        self._publisher: CommandConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._handler: BrokerHandler | None = None
        self._inbox = ""
        self._closed = False
        self._online = False
        self._resync = False  # a command on the subscriber connection failed
        self._lock = asyncio.Lock()  # serializes commands on the subscriber connection
        # What this node wants (authoritative, replayed on reconnection).
        self._wanted: dict[str, _Key] = {}  # pattern -> its subscription
        self._users: dict[_Key, set[str]] = {}  # subscription -> its patterns
        # What the reader judges arrivals with (changed only at stream points).
        self._view: TopicTrie[_Key] = TopicTrie()
        self._active: set[_Key] = set()
        self._barriers: collections.deque[_Barrier] = collections.deque()
        self._seq = itertools.count(1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "online" if self._online else "offline"
        return f"<RedisBroker {self._where} prefix={self._prefix!r} {state}>"

    @property
    def online(self) -> bool:
        """True while the subscriber connection is up."""
        return self._online

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, node_id: str, handler: BrokerHandler) -> None:
        """Connect, claim the node id, subscribe the broadcast channel and the inbox.

        Raises:
            InvalidState: already started or closed, or another live node uses
                ``node_id`` on this Redis and prefix.
            BrokerError: Redis is unreachable (``temporary=True``) or refused us.
        """
        if self._closed:
            raise InvalidState("broker is closed")
        if self._handler is not None:
            raise InvalidState("broker is already started")
        self._client_name = "wsgate-" + re.sub(r"[^\x21-\x7e]", "_", node_id)
        self._redis = Redis.from_url(
            self._url,
            retry=Retry(NoBackoff(), 0),  # we retry ourselves; fail fast while down
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=self._command_timeout,
            client_name=self._client_name,
        )
        self._publisher = CommandConnection(self._target, self._client_name, self._command_timeout)
        self._inbox = keys.node_inbox(self._prefix, node_id)
        self._inbox_bytes = self._inbox.encode()
        self._handler = handler
        try:
            [(_, subscribers)] = await self._redis.pubsub_numsub(self._inbox)
            if subscribers:
                raise InvalidState(
                    f"node {node_id!r} is already connected to Redis at {self._where} "
                    f"with prefix {self._prefix!r}"
                )
            pubsub = await self._connect()
        except BaseException as exc:
            redis, self._redis = self._redis, None
            publisher, self._publisher = self._publisher, None
            self._handler = None
            await redis.aclose()
            if publisher is not None:
                await publisher.aclose()
            if isinstance(exc, RedisError | OSError):
                raise _broker_error(f"cannot connect to Redis at {self._where}", exc) from exc
            raise
        self._reader = asyncio.create_task(self._run(pubsub), name=f"wsgate-redis-{node_id}")
        self._reader.add_done_callback(self._reader_done)

    async def close(self) -> None:
        """Stop delivering, close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._online = False
        reader, self._reader = self._reader, None
        if reader is not None:
            # Python 3.11's asyncio.wait_for (used by redis-py for socket I/O) can swallow
            # a cancellation that lands as a read completes; the loop below also checks
            # `_closed`, and we cancel again until the task really ends.
            while not reader.done():
                reader.cancel()
                await asyncio.wait([reader], timeout=0.1)
        async with self._lock:  # let a command in flight finish first
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                await self._discard(pubsub)
            redis, self._redis = self._redis, None
            if redis is not None:
                await redis.aclose()
            publisher, self._publisher = self._publisher, None
            if publisher is not None:
                await publisher.aclose()
        self._release_barriers()
        self._handler = None

    # -- the Broker verbs -------------------------------------------------------------

    async def subscribe(self, pattern: str) -> None:
        """Receive publications matching ``pattern``; returns once Redis confirmed.

        While Redis is unreachable the pattern is recorded and subscribed on
        reconnection, and this returns at once.

        Raises:
            InvalidTopic: ``pattern`` is not a valid pattern.
            InvalidState: the broker is not started, or closed.
        """
        self._check_running()
        validate_pattern(pattern)
        async with self._lock:
            if pattern in self._wanted or self._closed:
                return
            key = self._key(pattern)
            users = self._users.setdefault(key, set())
            first = not users
            users.add(pattern)
            self._wanted[pattern] = key
            barrier = await self._command(("add", pattern, key), key if first else None)
        await self._wait(barrier)

    async def unsubscribe(self, pattern: str) -> None:
        """Stop receiving publications for ``pattern`` (a no-op when not subscribed)."""
        async with self._lock:
            key = self._wanted.pop(pattern, None)
            if key is None or self._closed:
                return
            users = self._users[key]
            users.discard(pattern)
            last = not users
            if last:
                del self._users[key]
            barrier = await self._command(("remove", pattern, key), key if last else None)
        await self._wait(barrier)

    async def publish(self, publication: Publication) -> None:
        """PUBLISH to the topic's channel.

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            TypeError: the payload cannot be encoded in MessagePack.
            InvalidState: the broker is not started, or closed.
        """
        data = _encode(publication.topic, publication.payload)
        await self._publish(keys.topic_channel(self._prefix, publication.topic), data)

    async def broadcast(self, payload: Any) -> None:
        """PUBLISH to the broadcast channel every node (this one too) subscribes to.

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            TypeError: the payload cannot be encoded in MessagePack.
            InvalidState: the broker is not started, or closed.
        """
        await self._publish(self._broadcast, _encode("", payload))

    async def send_direct(self, inbox: str, data: bytes) -> bool:
        """PUBLISH to a participant's inbox channel.

        Returns:
            True when a live participant subscribes that inbox (PUBLISH reached one).

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            InvalidState: the broker is not started, or closed.
        """
        return await self._publish(keys.node_inbox(self._prefix, inbox), data) > 0

    async def enqueue_call(self, namespace: str, data: bytes) -> bool:
        """Queue a call for the workers of ``namespace`` (one script, one round trip).

        Returns:
            True when queued; False when no worker of the namespace is live.

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            InvalidState: the broker is not started, or closed.
        """
        try:
            return await self._calls.enqueue(namespace, data)
        except (RedisError, OSError) as exc:
            raise _broker_error(f"queueing a call in Redis at {self._where} failed", exc) from exc

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
        """Be one worker of ``namespace`` until cancelled (see :mod:`wsgate.broker.redis_calls`).

        Raises:
            InvalidState: the broker is not started, or was closed.
        """
        await self._calls.serve(
            namespace,
            worker_id,
            handle,
            claim_after=claim_after,
            max_in_flight=max_in_flight,
            on_ready=on_ready,
        )

    # -- commands ---------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._closed:
            raise InvalidState("broker is closed")
        if self._handler is None:
            raise InvalidState("broker is not started")

    def _command_client(self) -> Redis:
        self._check_running()
        assert self._redis is not None
        return self._redis

    def _key(self, pattern: str) -> _Key:
        if is_pattern(pattern):
            return (_GLOB, keys.pattern_glob(self._prefix, pattern))
        return (_CHANNEL, keys.topic_channel(self._prefix, pattern))

    async def _publish(self, channel: str, data: bytes) -> int:
        self._check_running()
        publisher = self._publisher
        assert publisher is not None
        try:
            return await publisher.publish(channel.encode(), data)
        except (RedisError, OSError) as exc:
            raise _broker_error(f"publish to Redis at {self._where} failed", exc) from exc

    async def _command(self, change: _Change, key: _Key | None) -> _Barrier | None:
        """(Un)subscribe ``key`` when given, then send a barrier; lock held.

        Returns the barrier to wait for, or None when offline (the wish is
        recorded; the reconnection applies it).
        """
        pubsub = self._pubsub
        if not self._online or pubsub is None:
            return None
        try:
            if key is not None:
                kind, name = key
                if change[0] == "add":
                    await (pubsub.psubscribe if kind == _GLOB else pubsub.subscribe)(name)
                else:
                    await (pubsub.punsubscribe if kind == _GLOB else pubsub.unsubscribe)(name)
            return await self._send_barrier(pubsub, change)
        except (RedisError, OSError) as exc:
            # The reader rebuilds the connection from the wanted state.
            log.debug("command on the subscriber connection failed: %s", exc)
            self._resync = True
            return None

    async def _send_barrier(self, pubsub: SubscriberConnection, change: _Change | None) -> _Barrier:
        barrier = _Barrier(next(self._seq), change, asyncio.get_running_loop().create_future())
        # Queued before sending: the reader may read the pong before ping() returns.
        self._barriers.append(barrier)
        await pubsub.ping(_BARRIER + str(barrier.seq).encode())
        return barrier

    async def _wait(self, barrier: _Barrier | None) -> None:
        if barrier is None:
            return
        # Resolved by its pong, by the loss of the connection, or by close();
        # the timeout only guards against a bug leaving it pending.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self._command_timeout + self._poll_interval):
                await asyncio.shield(barrier.future)

    def _release_barriers(self) -> None:
        """Resolve every pending barrier (their changes are in the wanted state)."""
        while self._barriers:
            future = self._barriers.popleft().future
            if not future.done():
                future.set_result(None)

    # -- the subscriber connection ----------------------------------------------------

    async def _connect(self) -> SubscriberConnection:
        """A new subscriber connection subscribed to everything wanted."""
        pubsub = await SubscriberConnection.open(self._target, self._client_name, self._on_stream)
        try:
            async with self._lock:
                channels = [self._broadcast, self._inbox]
                globs: list[str] = []
                for kind, name in self._users:
                    (globs if kind == _GLOB else channels).append(name)
                await pubsub.subscribe(*channels)
                if globs:
                    await pubsub.psubscribe(*globs)
                view: TopicTrie[_Key] = TopicTrie()
                for pattern, key in self._wanted.items():
                    view.add(pattern, key)
                self._view = view
                self._active.clear()
                self._release_barriers()
                self._pubsub = pubsub
                self._resync = False
                self._online = True
        except BaseException:
            await self._discard(pubsub)
            raise
        return pubsub

    async def _discard(self, pubsub: SubscriberConnection) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
        with contextlib.suppress(Exception):
            await pubsub.aclose()

    async def _run(self, pubsub: SubscriberConnection | None) -> None:
        """The reader task: read, and rebuild the connection whenever it fails."""
        while not self._closed:
            if pubsub is None:
                pubsub = await self._reconnect()
            try:
                await self._read(pubsub)
            except (RedisError, OSError, _Stalled) as exc:
                log.warning(
                    "lost the connection to Redis at %s (%s); reconnecting",
                    self._where,
                    str(exc) or type(exc).__name__,
                )
            except Exception:
                log.exception("unexpected error reading from Redis; reconnecting")
            self._online = False
            self._release_barriers()
            await self._discard(pubsub)
            pubsub = None
            await self._drop_idle_connections()

    async def _drop_idle_connections(self) -> None:
        """Close the pooled command connections: after an outage they are likely dead.

        redis-py checks a pooled connection before lending it, but misses one
        reset by the server (the stream holds an error, not an end of file), so
        the next PUBLISH would fail on it. Retrying PUBLISH instead could
        deliver twice.
        """
        if self._publisher is not None:
            self._publisher.reset()
        redis = self._redis
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.connection_pool.disconnect(inuse_connections=False)

    async def _reconnect(self) -> SubscriberConnection:
        """Connect again with exponential backoff and full jitter; INFO when done."""
        lost_at = time.monotonic()
        for attempt in itertools.count():
            bound = min(self._reconnect_cap, self._reconnect_base * 2**attempt)
            await asyncio.sleep(random.uniform(0, bound))
            try:
                pubsub = await self._connect()
            except (RedisError, OSError) as exc:
                log.debug("reconnection attempt %d to Redis failed: %s", attempt + 1, exc)
                continue
            self.stats.reconnects += 1
            log.info(
                "reconnected to Redis at %s after %.1f s; resubscribed %d patterns",
                self._where,
                time.monotonic() - lost_at,
                len(self._wanted),
            )
            return pubsub
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, pubsub: SubscriberConnection) -> None:
        """Watch the subscriber connection until it fails (raises).

        Messages are dispatched as they are read (:meth:`_on_stream`); this task
        only notices a lost connection, and pings an idle one to catch half-open
        connections.
        """
        while True:
            if self._resync:
                raise _Stalled("a command on the subscriber connection failed")
            await pubsub.wait_lost(self._poll_interval)
            now = time.monotonic()
            if self._barriers:
                if now - self._barriers[0].sent_at > self._command_timeout:
                    raise _Stalled(f"no answer to PING within {self._command_timeout:g} s")
            elif now - pubsub.last_traffic >= self._health_interval:
                async with self._lock:
                    if self._pubsub is pubsub:
                        await self._send_barrier(pubsub, None)

    def _on_stream(self, reply: Any) -> None:
        """One message of the subscriber stream, in stream order (from the protocol)."""
        try:
            self._dispatch(reply)
        except Exception:
            log.exception("unexpected error dispatching a message from Redis")

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            # An error reply to a command on the subscriber connection: rebuild it.
            log.warning("unexpected reply on the subscriber connection: %.200r", reply)
            self._resync = True
            return
        kind = reply[0]
        if kind == b"message":
            channel = reply[1]
            if channel == self._inbox_bytes:
                self._on_direct(reply[2])
            elif channel == self._broadcast_bytes:
                self._on_broadcast(reply[2])
            else:
                text = _text(channel)
                self._on_topic((_CHANNEL, text), text, reply[2])
        elif kind == b"pmessage":
            self._on_topic((_GLOB, _text(reply[1])), _text(reply[2]), reply[3])
        elif kind in _CONFIRMATIONS:
            subscribed, key_kind = _CONFIRMATIONS[kind]
            key = (key_kind, _text(reply[1]))
            if subscribed:
                self._active.add(key)
            else:
                self._active.discard(key)
        elif kind == b"pong":
            self._on_pong(reply[1])

    def _on_pong(self, data: Any) -> None:
        if not isinstance(data, bytes) or not data.startswith(_BARRIER):
            return
        seq = int(data[len(_BARRIER) :])
        while self._barriers and self._barriers[0].seq <= seq:
            barrier = self._barriers.popleft()
            if barrier.change is not None:
                action, pattern, key = barrier.change
                if action == "add":
                    self._view.add(pattern, key)
                else:
                    self._view.remove(pattern, key)
            if not barrier.future.done():
                barrier.future.set_result(None)

    def _on_topic(self, via: _Key, channel: str, data: Any) -> None:
        stats = self.stats
        stats.received += 1
        if not channel.startswith(self._topic_start):
            stats.filtered += 1
            return
        topic = channel[len(self._topic_start) :]
        # Deliver through the smallest subscribed key among this node's matching
        # patterns (see the module docstring): exactly one copy passes.
        best: _Key | None = None
        matched = False
        for key in self._view.match(topic):
            if key in self._active:
                if best is None or key < best:
                    best = key
                matched = matched or key == via
        if not matched:
            stats.filtered += 1
            return
        if via != best:
            stats.duplicates += 1
            return
        envelope = self._decode(data)
        if envelope is None:
            return
        if envelope.topic != topic:
            self._decode_error(f"envelope topic {envelope.topic!r} on channel {channel!r}")
            return
        handler = self._handler
        assert handler is not None
        stats.delivered += 1
        try:
            handler.on_publication(Publication(topic, envelope.payload))
        except Exception:
            stats.handler_errors += 1
            log.exception("broker handler failed on a publication to %s", topic)

    def _on_broadcast(self, data: Any) -> None:
        envelope = self._decode(data)
        if envelope is None:
            return
        handler = self._handler
        assert handler is not None
        self.stats.broadcasts += 1
        try:
            handler.on_broadcast(envelope.payload)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("broker handler failed on a broadcast")

    def _on_direct(self, data: Any) -> None:
        handler = self._handler
        if handler is None or not isinstance(data, bytes):
            return
        self.stats.direct += 1
        try:
            handler.on_direct(data)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("broker handler failed on a direct message")

    def _decode(self, data: Any) -> _Envelope | None:
        try:
            return _decoder.decode(data)
        except (msgspec.DecodeError, TypeError) as exc:
            self._decode_error(str(exc))
            return None

    def _decode_error(self, reason: str) -> None:
        count = self.stats.decode_errors = self.stats.decode_errors + 1
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: visible, never a flood
            log.warning("undecodable message from Redis skipped (%d so far): %s", count, reason)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("Redis reader task ended", exc_info=task.exception())


def _broker_error(what: str, exc: BaseException) -> BrokerError:
    """Map a redis-py or socket error to BrokerError, temporary when retrying may help."""
    temporary = isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)
    return BrokerError(f"{what}: {exc}", temporary=temporary)
