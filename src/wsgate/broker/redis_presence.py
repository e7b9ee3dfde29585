"""Presence on Redis: which node holds which connection, under node leases.

Every name is built in :mod:`wsgate.broker.keys` (its table gives types and
TTLs)::

    {prefix}:c:{connection}  "node US token [US user]"   PX lease   <- the truth
    {prefix}:u:{user}        zset cid -> expiry ms       PX >=lease <- an index
    {prefix}:node:{node}     instance token              PX lease   <- the lease
    {prefix}:nodes           zset node -> expiry ms      PX >=lease <- an index

**Liveness is the TTL.** A connection entry lives ``lease`` seconds after its
node last wrote it; the node's heartbeat rewrites all of them every
``lease / 3``. A node that dies without closing (SIGKILL) stops writing, and
Redis deletes its keys: no ghost survives the lease. The sorted sets are only
indexes (scored by expiry, trimmed at each write, their own TTL never below
the lease of their latest writer); readers check every hit against the TTL'd
key it names, so an index member never outlives its entry in an answer.

**Writes are Lua scripts** (:mod:`wsgate.broker.redis_presence_lua`, with the
stored value format), atomic, and batched (``BATCH`` registrations per call,
``PIPELINE`` calls per round trip), so a heartbeat for 10,000 connections costs
two round trips; ``register`` and ``unregister`` one each; ``locate_user`` and
``nodes`` two (the index, then ``MGET``), ``locate`` one. After a Redis restart
the first write loads the scripts again (one more round trip).

* ``register``: newest wins. The script swaps the entry and, when the user
  changed, removes the id from the replaced user's index (built from the
  stored value, so it runs on a standalone Redis, not a Cluster).
* ``unregister``: compare-and-delete; only the exact registration (node, token,
  user) is removed, with its index member, so an old connection's cleanup never
  touches a newer one with the same id.
* Heartbeat: re-asserts each local registration "if absent or still mine":
  it repairs what Redis lost (FLUSHALL, restart without persistence) and never
  overwrites a newer registration made elsewhere; a local registration found
  replaced is forgotten (the other node owns the id now).

**Outages.** ``register`` and ``unregister`` never raise because Redis is
unreachable: they are recorded and the heartbeat applies them on recovery
(registrations with ``register`` semantics, removals as compare-and-delete).
Lookups raise :class:`~wsgate.errors.BrokerError` with ``temporary=True``. The
heartbeat retries with exponential backoff and full jitter, capped at its own
interval so repair comes within one interval of Redis returning; one WARNING
per outage, one INFO on recovery.

**Races.** Heartbeat batches run exclusively of ``register``/``unregister``
(which run concurrently with each other), so a batch never re-creates an entry
removed while it was in flight, nor judges a registration not yet written.

**Node ids.** :meth:`RedisPresence.start` takes the node's lease with
"set if absent or mine" and refuses an id whose lease another running instance
holds. After a crash, the same id is therefore refused until the dead
instance's lease expires (at most ``lease`` seconds); random ids (the default)
never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsgate.broker import keys
from wsgate.broker.base import Registration
from wsgate.broker.redis_presence_lua import SCRIPTS, SEPARATOR, Script, decode, encode
from wsgate.broker.redis_url import check_redis_target
from wsgate.errors import BrokerError, ConfigError, InvalidState

__all__ = ["RedisPresence", "RedisPresenceStats"]

log = logging.getLogger("wsgate.broker.redis_presence")

RECONNECT_BASE: Final = 0.1
"""Upper bound (s) of the first retry delay in an outage; it doubles per failure."""
RECONNECT_CAP: Final = 5.0
"""Largest retry delay (s); never more than the heartbeat interval either."""
COMMAND_TIMEOUT: Final = 5.0
"""Socket timeout (s) of commands, and of waiting for a pooled connection."""
CONNECT_TIMEOUT: Final = 2.0
"""TCP connect timeout (s), unless the URL sets ``socket_connect_timeout``."""
MAX_CONNECTIONS: Final = 16
"""Connections to Redis at most: a burst of registrations queues, not a socket storm."""
BATCH: Final = 500
"""Registrations per script call (each call blocks Redis for about a millisecond)."""
PIPELINE: Final = 10
"""Script calls per round trip."""


@dataclass(frozen=True, slots=True)
class _Call:
    """One script call, and the registrations it carries (in result order)."""

    script: Script
    keys: list[bytes]
    args: list[bytes | int]
    registrations: Sequence[Registration] = ()


@dataclass(slots=True)
class RedisPresenceStats:
    """Counters of one presence (monotonic, since its creation)."""

    heartbeats: int = 0
    """Heartbeats completed (lease renewed, every local registration re-asserted)."""
    failed_heartbeats: int = 0
    """Heartbeats that failed (Redis unreachable or refusing)."""
    outages: int = 0
    """Times Redis was found unreachable (one WARNING each)."""
    repaired: int = 0
    """Entries a heartbeat had to re-create (Redis had lost them)."""
    superseded: int = 0
    """Local registrations a heartbeat found replaced by a newer one, and forgot."""
    deferred: int = 0
    """Registrations and removals recorded for the heartbeat while Redis was unreachable."""
    unreported_takeovers: int = 0
    """Other nodes' registrations replaced by a deferred registration (nobody was told)."""
    round_trips: int = 0
    """Requests sent to Redis (one command, or one pipeline)."""


class _Gate:
    """Shared for register/unregister (concurrent), exclusive for a heartbeat batch."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._lock:  # queues behind a waiting batch: batches do not starve
            self._active += 1
            self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._lock:
            await self._idle.wait()
            yield


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _broker_error(what: str, exc: BaseException) -> BrokerError:
    temporary = isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)
    return BrokerError(f"{what}: {exc}", temporary=temporary)


class RedisPresence:
    """Presence on one Redis server, with node leases (``redis://``, ``rediss://``).

    Args:
        url: as for :class:`~wsgate.broker.redis.RedisBroker`; query options go to
            redis-py and win over the defaults here.
        prefix: prefix of every key (see :mod:`wsgate.broker.keys`).
        lease: seconds a node's entries outlive its last write; the heartbeat
            runs every ``lease / 3``.
        reconnect_base: first retry delay bound (s) in an outage.
        reconnect_cap: largest retry delay (s), never above ``lease / 3``.
        command_timeout: socket timeout of commands (s).
        max_connections: connections to Redis at most.

    Raises:
        ConfigError: the URL, the prefix or the lease is unusable.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = keys.DEFAULT_PREFIX,
        lease: float = 15.0,
        reconnect_base: float = RECONNECT_BASE,
        reconnect_cap: float = RECONNECT_CAP,
        command_timeout: float = COMMAND_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        where = check_redis_target(url, prefix)
        if not 0.003 <= lease < 1e9:  # a lease in ms, with a heartbeat of at least 1 ms
            raise ConfigError(f"invalid presence lease {lease!r} (seconds)")
        self._url = url
        self._where = where
        self._prefix = prefix
        self._lease = lease
        self._lease_ms = round(lease * 1000)
        self._interval = lease / 3
        self._reconnect_base = reconnect_base
        self._reconnect_cap = min(reconnect_cap, self._interval)
        self._command_timeout = command_timeout
        self._max_connections = max_connections
        self._user_prefix = _b(keys.presence_user_prefix(prefix))
        self.stats = RedisPresenceStats()

        self._redis: Redis | None = None
        self._node: str | None = None
        self._instance = secrets.token_hex(8)
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._online = False
        self._outage_since: float | None = None
        self._repaired_before = 0  # stats.repaired when the outage began
        self._lease_lost = False
        self._last_write = 0.0  # monotonic time of the last write known to have landed
        self._wake = asyncio.Event()  # cuts the heartbeat's sleep short (outage seen)
        self._gate = _Gate()
        # This node's registrations by connection id: what the heartbeat re-asserts.
        self._local: dict[str, Registration] = {}
        # Recorded while Redis was unreachable; the heartbeat applies them.
        self._unsynced: dict[str, Registration] = {}
        self._deletes: set[Registration] = set()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "online" if self._online else "offline"
        return f"<RedisPresence {self._where} prefix={self._prefix!r} node={self._node!r} {state}>"

    @property
    def online(self) -> bool:
        """True while the last exchange with Redis succeeded (and after a heartbeat repaired)."""
        return self._online

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, node_id: str | None) -> None:
        """Connect; with a node id, take that node's lease and start the heartbeat.

        Raises:
            InvalidState: started twice, closed, a bad node id, or another running
                instance holds the lease of ``node_id`` (after a crash: until it
                expires, at most ``lease`` seconds).
            BrokerError: Redis is unreachable (``temporary=True``) or refused us.
        """
        if self._closing:
            raise InvalidState("presence is closed")
        if self._redis is not None:
            raise InvalidState("presence is already started")
        if node_id is not None and (not node_id or SEPARATOR in node_id):
            raise InvalidState(f"invalid node id {node_id!r}")
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._command_timeout,
            retry=Retry(NoBackoff(), 0),  # the heartbeat retries; fail fast while down
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=self._command_timeout,
            client_name="wsgate-presence-" + re.sub(r"[^\x21-\x7e]", "_", node_id or ""),
        )
        self._redis = redis = Redis.from_pool(pool)
        try:
            if node_id is None:
                await redis.ping()
            else:
                [taken, remaining] = await self._call(self._lease_call(node_id))
                if not taken:
                    raise InvalidState(
                        f"node id {node_id!r} is held by another running node on Redis at "
                        f"{self._where} with prefix {self._prefix!r} (its lease expires "
                        f"within {remaining / 1000:.1f} s)"
                    )
        except BaseException as exc:
            self._redis = None
            await redis.aclose()
            if isinstance(exc, RedisError | OSError):
                raise _broker_error(f"cannot connect to Redis at {self._where}", exc) from exc
            raise
        self._node = node_id
        self._online = True
        self._last_write = time.monotonic()
        if node_id is not None:
            self._heartbeat = asyncio.create_task(
                self._heartbeat_loop(), name=f"wsgate-presence-{node_id}"
            )
            self._heartbeat.add_done_callback(self._heartbeat_done)

    async def close(self) -> None:
        """Remove this node's registrations and lease (compare-and-delete), disconnect.

        Idempotent. Registrations and removals asked for afterwards do nothing.
        When Redis is unreachable the entries are left to expire with the lease.
        """
        if self._closing:
            return
        self._closing = True
        await self._stop_heartbeat()
        try:
            if self._node is not None and self._redis is not None:
                async with self._gate.exclusive():  # writes in flight land first
                    await self._leave()
        except (RedisError, OSError) as exc:
            log.warning(
                "could not remove the presence of node %s from Redis at %s (%s); "
                "its entries expire within %g s",
                self._node,
                self._where,
                exc,
                self._lease,
            )
        finally:
            async with self._gate.exclusive():
                await self._disconnect()

    async def abandon(self) -> None:
        """Stop as a killed process would: no heartbeat, no cleanup, disconnected.

        The node's entries stay until their lease expires. For tests of lease
        expiry, and for an exit in a hurry; :meth:`close` is the graceful stop.
        """
        if self._closing:
            return
        self._closing = True
        await self._stop_heartbeat()
        async with self._gate.exclusive():  # writes in flight finish (or fail) first
            await self._disconnect()

    async def _leave(self) -> None:
        node = self._node
        assert node is not None
        registrations = list({*self._local.values(), *self._deletes})
        calls = self._calls("delete", registrations, [])
        calls.append(
            _Call(
                SCRIPTS["release"],
                [_b(keys.presence_node(self._prefix, node)), _b(keys.presence_nodes(self._prefix))],
                [_b(self._instance), _b(node)],
            )
        )
        for start in range(0, len(calls), PIPELINE):
            await self._pipeline(calls[start : start + PIPELINE])

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is None:
            return
        self._wake.set()
        # On Python 3.11, redis-py can lose a cancellation: its writes go through
        # asyncio.wait_for, which returns the result of a write completing as the
        # cancellation arrives (fixed in 3.12). The loop also stops on _closing.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.1)

    async def _disconnect(self) -> None:
        self._closed = True
        self._online = False
        self._local.clear()
        self._unsynced.clear()
        self._deletes.clear()
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()

    # -- the Presence verbs -----------------------------------------------------------

    async def register(self, registration: Registration) -> Registration | None:
        """Record a connection of this node; the newest registration of an id wins.

        Returns:
            The registration it replaced (any node's), which the caller must close;
            None otherwise, and also when Redis is unreachable: the registration is
            then written by the heartbeat on recovery (still newest-wins), and a
            takeover it causes there is only counted and logged.

        Raises:
            InvalidState: not started, started without a node id, or the
                registration names another node or has ``\\x1f`` in its token.
        """
        self._require_node()
        if registration.node != self._node:
            raise InvalidState(f"registration of node {registration.node!r} on {self._node!r}")
        if SEPARATOR in registration.token:
            raise InvalidState("a registration token cannot contain \\x1f")
        async with self._gate.shared():
            if self._closing:
                return None
            cid = registration.connection_id
            self._local[cid] = registration
            self._unsynced.pop(cid, None)
            if not self._online:
                self._defer(registration)
                return None
            try:
                [old] = await self._call(self._calls("register", [registration], self._head())[0])
            except (RedisError, OSError) as exc:
                self._lost(exc, wake=True)
                self._defer(registration)
                return None
            except BaseException:  # cancelled: the outcome is unknown; the heartbeat settles it
                self._defer(registration)
                raise
        self._last_write = time.monotonic()
        return None if old is None else decode(cid, old)

    async def unregister(self, registration: Registration) -> bool:
        """Remove a registration only while it is the current one (compare-and-delete).

        Returns:
            True when it was removed. While Redis is unreachable: whether it was
            this node's current registration (the removal is applied on recovery).

        Raises:
            InvalidState: not started, or started without a node id.
        """
        self._require_node()
        async with self._gate.shared():
            if self._closing:
                return False
            cid = registration.connection_id
            mine = self._local.get(cid) == registration
            if mine:
                del self._local[cid]
            if self._unsynced.get(cid) == registration:
                del self._unsynced[cid]
            if not self._online:
                self._defer_delete(registration)
                return mine
            try:
                [removed] = await self._call(self._calls("delete", [registration], [])[0])
            except (RedisError, OSError) as exc:
                self._lost(exc, wake=True)
                self._defer_delete(registration)
                return mine
            except BaseException:
                self._defer_delete(registration)
                raise
        return bool(removed)

    async def locate(self, connection_id: str) -> Registration | None:
        """The live registration of a connection id, if any (one round trip).

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            InvalidState: not started, or closed.
        """
        redis = self._client()
        name = keys.presence_connection(self._prefix, connection_id)
        value = await self._lookup(redis.get(_b(name)))
        return None if value is None else decode(connection_id, value)

    async def locate_user(self, user: str) -> list[Registration]:
        """Every live registration of a user, sorted by connection id (two round trips).

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            InvalidState: not started, or closed.
        """
        redis = self._client()
        members: list[bytes] = await self._lookup(
            redis.zrange(_b(keys.presence_user(self._prefix, user)), 0, -1)
        )
        if not members:
            return []
        cids = [member.decode("utf-8", "surrogatepass") for member in members]
        names = [_b(keys.presence_connection(self._prefix, cid)) for cid in cids]
        values: list[bytes | None] = await self._lookup(redis.mget(names))
        found = (decode(cid, v) for cid, v in zip(cids, values, strict=True) if v is not None)
        # The index may lag (a member whose entry moved to another user or expired).
        return sorted((r for r in found if r and r.user == user), key=lambda r: r.connection_id)

    async def nodes(self) -> list[str]:
        """The ids of the nodes holding a live lease, sorted (two round trips).

        Raises:
            BrokerError: Redis failed (``temporary=True`` when unreachable).
            InvalidState: not started, or closed.
        """
        redis = self._client()
        members: list[bytes] = await self._lookup(
            redis.zrange(_b(keys.presence_nodes(self._prefix)), 0, -1)
        )
        if not members:
            return []
        ids = [member.decode("utf-8", "surrogatepass") for member in members]
        names = [_b(keys.presence_node(self._prefix, node)) for node in ids]
        leases: list[bytes | None] = await self._lookup(redis.mget(names))
        return sorted(node for node, lease in zip(ids, leases, strict=True) if lease is not None)

    # -- commands ---------------------------------------------------------------------

    def _require_node(self) -> None:
        """Writes need a started node (after close they do nothing)."""
        if self._closing:
            return
        if self._redis is None:
            raise InvalidState("presence is not started")
        if self._node is None:
            raise InvalidState("a presence started without a node id only looks up")

    def _client(self) -> Redis:
        if self._closed:
            raise InvalidState("presence is closed")
        if self._redis is None:
            raise InvalidState("presence is not started")
        return self._redis

    def _head(self) -> list[bytes | int]:
        return [self._lease_ms, self._user_prefix]

    def _lease_call(self, node_id: str) -> _Call:
        return _Call(
            SCRIPTS["lease"],
            [_b(keys.presence_node(self._prefix, node_id)), _b(keys.presence_nodes(self._prefix))],
            [_b(self._instance), self._lease_ms, _b(node_id)],
        )

    def _calls(
        self, script: str, registrations: Sequence[Registration], head: list[bytes | int]
    ) -> list[_Call]:
        """Batch script calls of at most :data:`BATCH` registrations each."""
        calls = []
        for start in range(0, len(registrations), BATCH):
            chunk = registrations[start : start + BATCH]
            names: list[bytes] = []
            args = list(head)
            for registration in chunk:
                cid = registration.connection_id
                names.append(_b(keys.presence_connection(self._prefix, cid)))
                if registration.user is not None:
                    names.append(_b(keys.presence_user(self._prefix, registration.user)))
                args += (encode(registration), _b(cid))
            calls.append(_Call(SCRIPTS[script], names, args, chunk))
        return calls

    async def _call(self, call: _Call) -> Any:
        """Run one script call (one round trip)."""
        [result] = await self._pipeline([call])
        return result

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        """Run script calls in one round trip; raise the first error after all ran.

        Redis forgets its scripts when it restarts: then every script is loaded
        again and the calls that found none run again (one more round trip).
        """
        redis = self._client()
        async with redis.pipeline(transaction=False) as pipe:
            # redis-py leaves Pipeline.execute_command unannotated; it queues a command.
            queue: Callable[..., object] = pipe.execute_command
            for call in calls:
                queue("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            self.stats.round_trips += 1
            results: list[Any] = await pipe.execute(raise_on_error=False)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:
                for script in SCRIPTS.values():
                    queue("SCRIPT", "LOAD", script.source)
                for i in missing:
                    call = calls[i]
                    queue("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                self.stats.round_trips += 1
                again = await pipe.execute(raise_on_error=False)
                for i, result in zip(missing, again[len(SCRIPTS) :], strict=True):
                    results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _lookup(self, command: Any) -> Any:
        self.stats.round_trips += 1
        try:
            result = await command
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
                self._lost(exc, wake=True)
            raise _broker_error(f"presence lookup in Redis at {self._where} failed", exc) from exc
        if self._node is None and self._outage_since is not None:
            self._recovered()  # a node recovers when its heartbeat has repaired
        return result

    def _defer(self, registration: Registration) -> None:
        if self._local.get(registration.connection_id) == registration:
            self._unsynced[registration.connection_id] = registration
            self.stats.deferred += 1

    def _defer_delete(self, registration: Registration) -> None:
        # Past twice the lease since our last landed write, all we wrote has expired.
        if time.monotonic() - self._last_write > 2 * self._lease:
            self._deletes.clear()
            return
        self._deletes.add(registration)
        self.stats.deferred += 1

    # -- outages ----------------------------------------------------------------------

    def _lost(self, exc: BaseException, *, wake: bool) -> None:
        """Redis failed: go offline (writes are deferred); WARNING once per outage."""
        self._online = False
        if wake:
            self._wake.set()  # the heartbeat starts retrying now
        if self._outage_since is None and not self._closing:
            self._outage_since = time.monotonic()
            self._repaired_before = self.stats.repaired
            self.stats.outages += 1
            log.warning(
                "presence lost Redis at %s (%s); %s",
                self._where,
                str(exc) or type(exc).__name__,
                "retrying with backoff" if self._node is not None else "lookups fail meanwhile",
            )

    def _recovered(self) -> None:
        self._online = True
        since, self._outage_since = self._outage_since, None
        if since is None:
            return
        repaired = self.stats.repaired - self._repaired_before
        log.info(
            "presence reached Redis at %s again after %.1f s%s",
            self._where,
            time.monotonic() - since,
            ""
            if self._node is None
            else f"; {len(self._local)} registrations re-asserted, {repaired} re-created",
        )

    async def _drop_idle_connections(self) -> None:
        """Close pooled connections: after an outage they are likely dead."""
        redis = self._redis
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.connection_pool.disconnect(inuse_connections=False)

    # -- heartbeat --------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Renew every ``lease / 3``; in an outage, retry with backoff and full jitter."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self._interval
        attempt = 0
        while not self._closing:
            if self._outage_since is None:
                attempt = 0
                delay = next_beat - loop.time()
            else:
                bound = min(self._reconnect_cap, self._reconnect_base * 2 ** min(attempt, 32))
                delay = random.uniform(0, bound)
                attempt += 1
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            began = loop.time()
            try:
                await self._beat()
            except Exception as exc:  # never ends the loop
                self.stats.failed_heartbeats += 1
                if not isinstance(exc, RedisError | OSError):
                    log.exception("presence heartbeat failed unexpectedly")
                log.debug("presence heartbeat %d failed: %r", attempt, exc)
                self._lost(exc, wake=False)
                await self._drop_idle_connections()
                continue
            self.stats.heartbeats += 1
            self._last_write = time.monotonic()
            next_beat = began + self._interval
            self._recovered()

    async def _beat(self) -> None:
        """Renew the lease, apply what was deferred, re-assert every local registration.

        Runs in round trips of :data:`PIPELINE` script calls, each exclusive of
        register/unregister and judged on the local state of that moment.
        """
        node = self._node
        assert node is not None
        async with self._gate.exclusive():
            deletes = list(self._deletes)
            self._deletes.clear()
            if time.monotonic() - self._last_write > 2 * self._lease:
                deletes = []  # all we wrote has expired (see _defer_delete)
            unsynced = [r for cid, r in self._unsynced.items() if self._local.get(cid) == r]
            self._unsynced.clear()
            pending = {r.connection_id for r in unsynced}
            cids = [cid for cid in self._local if cid not in pending]
            per_trip = BATCH * PIPELINE
            calls = [self._lease_call(node)]
            calls += self._calls("delete", deletes, [])
            calls += self._calls("register", unsynced, self._head())
            calls += self._calls(
                "assert", [self._local[c] for c in cids[:per_trip]], [self._lease_ms]
            )
            try:
                results = await self._pipeline(calls)
            except BaseException:
                self._deletes.update(deletes)
                for registration in unsynced:
                    self._unsynced.setdefault(registration.connection_id, registration)
                raise
            self._after_lease(node, results[0])
            self._settle(calls[1:], results[1:])
        for start in range(per_trip, len(cids), per_trip):
            if self._closing:
                return
            async with self._gate.exclusive():
                chunk = [self._local[c] for c in cids[start : start + per_trip] if c in self._local]
                calls = self._calls("assert", chunk, [self._lease_ms])
                if calls:
                    self._settle(calls, await self._pipeline(calls))

    def _after_lease(self, node: str, result: list[int]) -> None:
        taken = bool(result[0])
        if not taken and not self._lease_lost:
            log.error(
                "another running instance took the lease of node id %r on Redis at %s; "
                "two nodes share this id",
                node,
                self._where,
            )
        self._lease_lost = not taken

    def _settle(self, calls: Iterable[_Call], results: Iterable[Any]) -> None:
        """Apply the per-registration outcomes of batch calls (gate held)."""
        for call, outcomes in zip(calls, results, strict=True):
            kind = call.script
            for registration, outcome in zip(call.registrations, outcomes, strict=True):
                cid = registration.connection_id
                if kind is SCRIPTS["assert"]:
                    if outcome == 1:
                        self.stats.repaired += 1
                    elif outcome == 2 and self._local.get(cid) == registration:
                        del self._local[cid]  # taken over elsewhere: the id is not ours
                        self.stats.superseded += 1
                elif kind is SCRIPTS["register"] and outcome is not None:
                    replaced = decode(cid, outcome)
                    if replaced is not None and replaced.node != self._node:
                        self.stats.unreported_takeovers += 1
                        log.info(
                            "connection %s, registered while Redis was unreachable, replaced "
                            "node %s's registration; that connection was not told",
                            cid,
                            replaced.node,
                        )

    def _heartbeat_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("presence heartbeat task ended", exc_info=task.exception())
