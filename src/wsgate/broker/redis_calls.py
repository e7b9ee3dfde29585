"""Client calls for backend workers, on Redis: one stream per method namespace.

Names are built in :mod:`wsgate.broker.keys` (its table gives types and TTLs)::

    node                                  Redis                         worker processes
    enqueue_call("orders", env)  --EVALSHA enqueue-->
        a live worker in {prefix}:workers:orders?  no: 0 (the node answers unknown_method)
        yes: XADD {prefix}:calls:orders MAXLEN ~10000 * d env; 1
                                          XREADGROUP GROUP workers {id} BLOCK   <-- worker
                                          handle(env): the Response goes to the node's inbox
                                          XACK + XDEL (one script)              <-- worker
                                          XAUTOCLAIM idle > claim_after         <-- any worker

**At least once.** An entry read by a worker stays in the group's pending list
until that worker acknowledges it. Every worker periodically runs
``XAUTOCLAIM`` on entries idle for more than ``claim_after`` seconds and takes
them over. A live worker keeps the entries it is still handling fresh: its
heartbeat resets their idle time (``XCLAIM`` with ``JUSTID``, only for entries
it still owns), so a call that takes longer than ``claim_after`` is not taken
from a live worker; only a worker that stopped heartbeating (killed, frozen,
cut off from Redis) loses its calls. An acknowledged entry is deleted at once,
so the stream holds only calls not yet answered; the ``MAXLEN ~`` trim bounds
a backlog nobody serves (the oldest calls go, their callers time out).

**Liveness.** Each worker scores itself in ``{prefix}:workers:{namespace}``
with its lease expiry (Redis ``TIME``, so worker clocks do not matter) every
:data:`HEARTBEAT` seconds (more often with a short ``claim_after``); the
enqueue script counts members whose expiry has not passed. A killed worker
counts as live for up to :data:`LEASE` seconds: calls queued then go to the
other workers, or time out when there are none. The same heartbeat script
creates the consumer group (``MKSTREAM``) when it is missing, so a worker is
never live without its group, even after Redis lost its data.

**Outages.** The worker's heartbeat and read loops retry with exponential
backoff and full jitter; one WARNING per outage, one INFO when a command
succeeds again. Entries handled meanwhile whose acknowledgement failed are
acknowledged later (and kept fresh until then). When Redis lost its data (a
restart without persistence), the first read finds no group (``NOGROUP``) and
runs the heartbeat at once, which recreates the group and registers the
worker again.

Every key lives in one namespace's pair of keys; like presence, the scripts
assume a standalone Redis (not a Redis Cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from wsgate.broker import keys
from wsgate.broker.base import CALL_BACKLOG, CallHandler
from wsgate.errors import InvalidState

__all__ = ["HEARTBEAT", "LEASE", "RedisCalls"]

log = logging.getLogger("wsgate.broker.redis_calls")

HEARTBEAT: Final = 1.0
"""Seconds between two heartbeats of a worker (less with a short ``claim_after``)."""
LEASE: Final = 3.0
"""Seconds a worker counts as live after its last heartbeat."""
RETENTION: Final = 3600.0
"""Seconds a call stream outlives the last heartbeat of its workers."""
LEAVE_TIMEOUT: Final = 1.0
"""Seconds a stopping worker spends, at most, removing itself from the live set."""

_FIELD: Final = b"d"

_PRELUDE: Final = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
_ENQUEUE: Final = r"""
-- KEYS: workers, stream. ARGV: envelope, backlog. 1 queued, 0 no live worker.
if redis.call('ZCOUNT', KEYS[1], now_ms(), '+inf') == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1])
return 1
"""
_HEARTBEAT: Final = r"""
-- KEYS: workers, stream. ARGV: group, worker, lease ms, retention ms, then the ids
-- of the entries the worker is handling. Returns how many of those it still owns.
local group, worker, lease, retention = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.pcall('XGROUP', 'CREATE', KEYS[2], group, '0', 'MKSTREAM')  -- BUSYGROUP: exists
local now = now_ms()
redis.call('ZADD', KEYS[1], now + lease, worker)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
if redis.call('PTTL', KEYS[2]) < retention then redis.call('PEXPIRE', KEYS[2], retention) end
local owned = 0
for i = 5, #ARGV do
  -- Reset the idle time of entries still ours; never take one back from another worker.
  local mine = redis.call('XPENDING', KEYS[2], group, ARGV[i], ARGV[i], 1, worker)
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[2], group, worker, 0, ARGV[i], 'JUSTID')
    owned = owned + 1
  end
end
return owned
"""
_ACK: Final = r"""
-- KEYS: stream. ARGV: group, then entry ids. Acknowledge and delete.
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return n
"""
_LEAVE: Final = r"""
-- KEYS: workers. ARGV: worker.
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, body: str) -> _Script:
        source = _PRELUDE + body
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_SCRIPTS: Final = {
    name: _Script.of(body)
    for name, body in [
        ("enqueue", _ENQUEUE),
        ("heartbeat", _HEARTBEAT),
        ("ack", _ACK),
        ("leave", _LEAVE),
    ]
}


async def _run_script(
    redis: Redis, name: str, names: Sequence[str], args: Sequence[bytes | str | int]
) -> Any:
    """Run one script (one round trip; two when Redis lost its script cache)."""
    script = _SCRIPTS[name]
    # redis-py leaves execute_command unannotated; a typed reference keeps mypy strict.
    run: Callable[..., Awaitable[Any]] = redis.execute_command
    try:
        return await run("EVALSHA", script.sha, len(names), *names, *args)
    except NoScriptError:
        return await run("EVAL", script.source, len(names), *names, *args)


def _raise_if_cancelled() -> None:
    """Raise CancelledError when the current task was cancelled, even if nothing raised it.

    Python 3.11's ``asyncio.wait_for`` (which redis-py uses to write commands)
    drops a cancellation that arrives as the awaited operation completes; the
    task still counts it (``Task.cancelling``), so the loops check at each turn
    instead of running on forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisCalls:
    """The call queues of one Redis broker.

    Args:
        client: the broker's command client (raises InvalidState once closed).
        prefix: the key prefix.
        where: the server, for logs (never a password).
        reconnect_base: first retry delay bound (s) in an outage.
        reconnect_cap: largest retry delay (s).
        heartbeat: seconds between two heartbeats of a worker.
        lease: seconds a worker stays live after its last heartbeat.
    """

    def __init__(
        self,
        client: Callable[[], Redis],
        prefix: str,
        where: str,
        *,
        reconnect_base: float,
        reconnect_cap: float,
        heartbeat: float = HEARTBEAT,
        lease: float = LEASE,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.where = where
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.heartbeat = heartbeat
        self.lease = lease

    async def enqueue(self, namespace: str, data: bytes) -> bool:
        """Queue ``data`` when a worker of ``namespace`` is live (raises RedisError, OSError)."""
        names = [
            keys.call_workers(self.prefix, namespace),
            keys.call_stream(self.prefix, namespace),
        ]
        queued = await _run_script(self.client(), "enqueue", names, [data, CALL_BACKLOG])
        return bool(queued)

    async def serve(
        self,
        namespace: str,
        worker_id: str,
        handle: CallHandler,
        *,
        claim_after: float,
        max_in_flight: int,
        on_ready: Callable[[], None] | None,
    ) -> None:
        """One worker loop; see :meth:`wsgate.broker.base.Broker.serve_calls`."""
        if claim_after <= 0 or max_in_flight < 1:
            raise InvalidState("claim_after must be positive and max_in_flight at least 1")
        self.client()  # InvalidState when not started
        worker = _Worker(
            self,
            namespace,
            worker_id,
            handle,
            claim_after=claim_after,
            max_in_flight=max_in_flight,
            on_ready=on_ready,
        )
        await worker.run()

    def backoff(self, attempt: int, cap: float) -> float:
        """A delay with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(cap, self.reconnect_base * 2 ** min(attempt, 30)))


class _Worker:
    """One running ``serve_calls``: a heartbeat task, a read loop, handler tasks."""

    def __init__(
        self,
        calls: RedisCalls,
        namespace: str,
        worker_id: str,
        handle: CallHandler,
        *,
        claim_after: float,
        max_in_flight: int,
        on_ready: Callable[[], None] | None,
    ) -> None:
        self.calls = calls
        self.namespace = namespace
        self.id = worker_id
        self.handle = handle
        self.max_in_flight = max_in_flight
        self.on_ready = on_ready
        self.stream = keys.call_stream(calls.prefix, namespace)
        self.workers = keys.call_workers(calls.prefix, namespace)
        self.claim_after_ms = max(1, round(claim_after * 1000))
        # Idle times are reset well before claim_after; claims are looked for as often.
        self.interval = min(calls.heartbeat, claim_after / 3)
        self.claim_every = max(0.01, min(calls.heartbeat, claim_after / 2))
        self.block_ms = max(10, round(self.claim_every * 1000))
        self.running: dict[bytes, asyncio.Task[None]] = {}
        self.unacked: list[bytes] = []  # handled, but the acknowledgement failed
        self.slot_freed = asyncio.Event()
        self.live = asyncio.Event()
        self.outage = False

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"wsgate-worker-{self.id}")
        try:
            await self._consume(heartbeat)
        finally:
            # The calls in hand are not acknowledged: another worker takes them over
            # after claim_after (they are no longer kept fresh by the heartbeat).
            tasks = [heartbeat, *self.running.values()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            await self._leave()

    async def _leave(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await _run_script(self.calls.client(), "leave", [self.workers], [self.id])

    # -- outages ----------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        self.calls.client()  # a closed broker is no outage: raises InvalidState
        if not self.outage:
            self.outage = True
            log.warning(
                "worker %s of %s lost Redis at %s (%s); retrying",
                self.id,
                self.namespace,
                self.calls.where,
                str(exc) or type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self.outage:
            self.outage = False
            log.info("worker %s of %s is back on Redis", self.id, self.namespace)

    # -- heartbeat --------------------------------------------------------------------

    async def _beat(self) -> None:
        ids = [*self.running, *self.unacked]
        args: list[bytes | str | int] = [
            keys.CALL_GROUP,
            self.id,
            round(self.calls.lease * 1000),
            round(RETENTION * 1000),
            *ids,
        ]
        await _run_script(self.calls.client(), "heartbeat", [self.workers, self.stream], args)

    async def _heartbeat_loop(self) -> None:
        attempt = 0
        while True:
            _raise_if_cancelled()
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                self._failed(exc)
                await asyncio.sleep(self.calls.backoff(attempt, self.interval))
                attempt += 1
                continue
            attempt = 0
            self._recovered()
            if not self.live.is_set():
                self.live.set()
                if self.on_ready is not None:
                    self.on_ready()
            await asyncio.sleep(self.interval)

    # -- reading ----------------------------------------------------------------------

    async def _consume(self, heartbeat: asyncio.Task[None]) -> None:
        # Read only once the group exists and the worker is live.
        live = asyncio.ensure_future(self.live.wait())
        try:
            await asyncio.wait([heartbeat, live], return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        loop = asyncio.get_running_loop()
        attempt = 0
        cursor = b"0-0"
        next_claim = 0.0
        while True:
            _raise_if_cancelled()
            if heartbeat.done():
                heartbeat.result()  # raises why it ended (the broker was closed)
                raise InvalidState("the worker heartbeat ended")
            free = self.max_in_flight - len(self.running)
            if free <= 0:
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            try:
                await self._retry_acks()
                entries: list[tuple[bytes, Any]] = []
                if loop.time() >= next_claim:
                    next_claim = loop.time() + self.claim_every
                    cursor, entries = await self._claim(cursor, free)
                if not entries:
                    entries = await self._read(free)
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    # Redis lost the stream (restart, FLUSHALL): the heartbeat recreates it.
                    await self._recreate_group(attempt)
                else:
                    self._failed(exc)
                    await asyncio.sleep(self.calls.backoff(attempt, self.calls.reconnect_cap))
                attempt += 1
                continue
            attempt = 0
            self._recovered()
            for entry_id, fields in entries:
                self._start(entry_id, fields)

    async def _recreate_group(self, attempt: int) -> None:
        try:
            await self._beat()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            await asyncio.sleep(self.calls.backoff(attempt, self.calls.reconnect_cap))
        else:
            self._recovered()

    async def _claim(self, cursor: bytes, count: int) -> tuple[bytes, list[tuple[bytes, Any]]]:
        reply = await self.calls.client().xautoclaim(
            self.stream,
            keys.CALL_GROUP,
            self.id,
            min_idle_time=self.claim_after_ms,
            start_id=cursor,
            count=count,
        )
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]
        if entries:
            log.info(
                "worker %s of %s took over %d calls of a silent worker",
                self.id,
                self.namespace,
                len(entries),
            )
        return reply[0], entries

    async def _read(self, count: int) -> list[tuple[bytes, Any]]:
        reply: Any = await self.calls.client().xreadgroup(
            keys.CALL_GROUP, self.id, {self.stream: ">"}, count=count, block=self.block_ms
        )
        return [entry for _, stream_entries in reply or () for entry in stream_entries]

    # -- handling ---------------------------------------------------------------------

    def _start(self, entry_id: bytes, fields: Any) -> None:
        if entry_id in self.running:
            return  # ours already (taken back after its idle time was not reset)
        data = fields.get(_FIELD) if isinstance(fields, dict) else None
        task = asyncio.create_task(self._handle(entry_id, data))
        self.running[entry_id] = task

    async def _handle(self, entry_id: bytes, data: bytes | None) -> None:
        try:
            if data is not None:
                try:
                    await self.handle(data)
                except Exception:
                    log.exception("a worker of %s failed on a call", self.namespace)
            self.unacked.append(entry_id)
            # On failure the id stays in unacked: the read loop acknowledges it later.
            with contextlib.suppress(RedisError, OSError, InvalidState):
                await self._retry_acks()
        finally:
            self.running.pop(entry_id, None)
            self.slot_freed.set()

    async def _retry_acks(self) -> None:
        """Acknowledge what was handled (kept for a later attempt when Redis fails)."""
        if not self.unacked:
            return
        ids, self.unacked = self.unacked, []
        try:
            await _run_script(self.calls.client(), "ack", [self.stream], [keys.CALL_GROUP, *ids])
        except (RedisError, OSError):
            self.unacked.extend(ids)
            raise
