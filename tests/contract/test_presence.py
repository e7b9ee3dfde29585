"""The presence contract, on every backend; then what only Redis has (leases, repair).

The contract tests run once per backend (``presence_factory`` is parametrized):
``MemoryPresence`` instances sharing one ``MemoryBus``, and ``RedisPresence``
on the session's redis-server under a prefix unique to the test. The Redis
tests use a short lease (:data:`LEASE`, 1 s in the suite's time unit) and wait
on conditions (polling), never on fixed sleeps. The outage tests stop the
session's redis-server (SIGKILL) and start it again; each leaves it running.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from contract._media import RedisServer, scaled
from contract._presence import PresenceMedium, Proxy, RedisPresenceMedium, eventually
from wsgate.broker import Presence, Registration, keys
from wsgate.broker.redis_presence import RedisPresence
from wsgate.errors import BrokerError, InvalidState

LOGGER = "wsgate.broker.redis_presence"
LEASE = scaled(1.0)
HEARTBEAT = LEASE / 3
SLACK = scaled(0.5)  # scheduling and polling delays on a busy machine

_tokens = itertools.count(1)


def reg(cid: str, node: str, user: str | None = None) -> Registration:
    """A registration with a fresh token (a new connection instance)."""
    return Registration(cid, node, user, f"t{next(_tokens)}")


def as_redis(presence: Presence) -> RedisPresence:
    assert isinstance(presence, RedisPresence)
    return presence


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A synchronous condition for :func:`eventually`."""

    async def check() -> bool:
        return condition()

    return check


# -- the contract (every backend) -----------------------------------------------------


async def test_the_backend_is_a_presence(presence_factory: PresenceMedium) -> None:
    assert isinstance(await presence_factory("n1"), Presence)


async def test_register_locate_unregister(presence_factory: PresenceMedium) -> None:
    a = await presence_factory("n1")
    r = reg("c1", "n1", "alice")
    assert await a.register(r) is None
    assert await a.locate("c1") == r
    assert await a.locate_user("alice") == [r]
    assert await a.unregister(r) is True
    assert await a.locate("c1") is None
    assert await a.locate_user("alice") == []
    assert await a.unregister(r) is False


async def test_unknown_ids_and_users_are_absent(presence_factory: PresenceMedium) -> None:
    a = await presence_factory("n1")
    anonymous = reg("anon", "n1")
    await a.register(anonymous)
    assert await a.locate("anon") == anonymous
    assert await a.locate("nobody") is None
    assert await a.locate_user("nobody") == []
    assert await a.locate_user("None") == []


async def test_newest_wins_and_register_returns_the_replaced(
    presence_factory: PresenceMedium,
) -> None:
    a = await presence_factory("n1")
    b = await presence_factory("n2")
    first = reg("c1", "n1", "alice")
    assert await a.register(first) is None
    again = reg("c1", "n1", "alice")  # a newer connection on the same node
    assert await a.register(again) == first
    elsewhere = reg("c1", "n2", "alice")  # then on another node
    assert await b.register(elsewhere) == again
    assert await b.register(elsewhere) is None  # the same registration replaces nothing
    assert await a.locate("c1") == elsewhere
    assert await a.locate_user("alice") == [elsewhere]


async def test_an_old_connections_cleanup_keeps_the_new_one(
    presence_factory: PresenceMedium,
) -> None:
    a = await presence_factory("n1")
    b = await presence_factory("n2")
    old = reg("c1", "n1", "alice")
    new = reg("c1", "n2", "alice")  # same id, same user: only the token differs
    await a.register(old)
    assert await b.register(new) == old
    assert await a.unregister(old) is False
    for presence in (a, b):
        assert await presence.locate("c1") == new
        assert await presence.locate_user("alice") == [new]
    # The same on one node: two instances of one id.
    local_old, local_new = reg("c2", "n2", "alice"), reg("c2", "n2", "alice")
    await b.register(local_old)
    await b.register(local_new)
    assert await b.unregister(local_old) is False
    assert await a.locate_user("alice") == [new, local_new]
    assert await b.unregister(new) is True
    assert await b.unregister(local_new) is True
    assert await a.locate("c1") is None
    assert await a.locate_user("alice") == []


async def test_a_takeover_may_change_the_user(presence_factory: PresenceMedium) -> None:
    a = await presence_factory("n1")
    b = await presence_factory("n2")
    alices = reg("c1", "n1", "alice")
    bobs = reg("c1", "n2", "bob")
    await a.register(alices)
    assert await b.register(bobs) == alices
    assert await a.locate_user("alice") == []
    assert await a.locate_user("bob") == [bobs]
    anonymous = reg("c1", "n1")
    assert await a.register(anonymous) == bobs
    assert await b.locate_user("bob") == []
    assert await b.locate("c1") == anonymous
    assert await b.unregister(bobs) is False  # the old cleanup changes nothing
    assert await a.unregister(alices) is False
    assert await b.locate("c1") == anonymous


async def test_locate_user_across_nodes(presence_factory: PresenceMedium) -> None:
    a = await presence_factory("n1")
    b = await presence_factory("n2")
    reader = await presence_factory(None)  # a backend process: looks up only
    user = "ü sér:*?[x]\\ \x1f{tag}"  # any non-empty string, separators included
    mine = [
        reg("dev:1@x.y-z_", "n1", user),
        reg("b", "n2", user),
        reg("a", "n1", user),
        reg("z.9", "n2", user),
    ]
    for r in mine:
        await (a if r.node == "n1" else b).register(r)
    await a.register(reg("other", "n1", "someone else"))
    await b.register(reg("anonymous", "n2"))
    expected = sorted(mine, key=lambda r: r.connection_id)
    for presence in (a, b, reader):
        assert await presence.locate_user(user) == expected
    for r in mine:
        assert await reader.locate(r.connection_id) == r


async def test_nodes_lists_started_nodes_and_drops_closed_ones(
    presence_factory: PresenceMedium,
) -> None:
    reader = await presence_factory(None)
    a = await presence_factory("n1")
    await presence_factory("n2")
    assert await reader.nodes() == ["n1", "n2"]  # a read-only participant is no node
    await a.close()
    await a.close()  # idempotent
    assert await reader.nodes() == ["n2"]


async def test_close_removes_a_nodes_entries_and_no_others(
    presence_factory: PresenceMedium,
) -> None:
    a = await presence_factory("n1")
    b = await presence_factory("n2")
    reader = await presence_factory(None)
    await a.register(reg("c1", "n1", "alice"))
    await a.register(reg("c2", "n1", "bob"))
    await a.register(reg("c3", "n1"))
    taken = reg("c2", "n2", "alice")  # b took c2 over: a's close must not remove it
    await b.register(taken)
    kept = reg("c4", "n2", "alice")
    await b.register(kept)
    await a.close()
    assert await reader.locate("c1") is None
    assert await reader.locate("c3") is None
    assert await reader.locate("c2") == taken
    assert await reader.locate_user("alice") == [taken, kept]
    assert await reader.locate_user("bob") == []
    assert await reader.nodes() == ["n2"]


# -- Redis: keys, leases, node ids ----------------------------------------------------


async def test_every_key_has_a_ttl_and_close_leaves_none(
    redis_presence_medium: RedisPresenceMedium,
) -> None:
    medium = redis_presence_medium
    a = await medium("n1", lease=LEASE)
    b = await medium("n2", lease=LEASE)
    await a.register(reg("c1", "n1", "alice"))
    await b.register(reg("c2", "n2", "alice"))
    await b.register(reg("c3", "n2"))
    names = await medium.raw.keys(keys.glob_escape(medium.prefix) + ":*")
    expected = {
        keys.presence_connection(medium.prefix, "c1"),
        keys.presence_connection(medium.prefix, "c2"),
        keys.presence_connection(medium.prefix, "c3"),
        keys.presence_user(medium.prefix, "alice"),
        keys.presence_node(medium.prefix, "n1"),
        keys.presence_node(medium.prefix, "n2"),
        keys.presence_nodes(medium.prefix),
    }
    assert {name.decode() for name in names} == expected
    for name in expected:
        assert 0 < await medium.raw.pttl(name) <= LEASE * 1000
    await a.close()
    await b.close()
    assert await medium.raw.keys(keys.glob_escape(medium.prefix) + ":*") == []


async def test_a_live_node_id_is_refused_until_closed(
    redis_presence_medium: RedisPresenceMedium,
) -> None:
    a = await redis_presence_medium("n1")
    with pytest.raises(InvalidState, match="held by another running node"):
        await redis_presence_medium("n1")
    await a.close()
    await redis_presence_medium("n1")


async def test_only_a_node_writes_and_only_its_own_registrations(
    redis_presence_medium: RedisPresenceMedium,
) -> None:
    reader = await redis_presence_medium(None)
    with pytest.raises(InvalidState):
        await reader.register(reg("c1", "n1"))
    with pytest.raises(InvalidState):
        await reader.unregister(reg("c1", "n1"))
    a = await redis_presence_medium("n1")
    with pytest.raises(InvalidState):
        await a.register(reg("c1", "n2"))
    with pytest.raises(InvalidState):
        await a.register(Registration("c1", "n1", None, "bad\x1ftoken"))
    with pytest.raises(InvalidState):
        await redis_presence_medium("bad\x1fnode")
    await a.close()
    assert await a.register(reg("c1", "n1")) is None  # after close: nothing, quietly
    assert await a.unregister(reg("c1", "n1")) is False
    with pytest.raises(InvalidState):
        await a.locate("c1")


async def test_a_killed_nodes_entries_and_keys_expire_with_its_lease(
    redis_presence_medium: RedisPresenceMedium,
) -> None:
    medium = redis_presence_medium
    dead = await medium("dead", lease=LEASE)
    alive = await medium("alive", lease=LEASE)
    for r in (reg("c1", "dead", "alice"), reg("c2", "dead"), reg("c3", "dead", "carol")):
        await dead.register(r)
    survivor = reg("c4", "alive", "alice")
    await alive.register(survivor)
    await as_redis(dead).abandon()  # as SIGKILL: no close, no more heartbeats
    assert await alive.locate("c1") is not None  # the lease still runs

    async def gone() -> bool:
        found = [await alive.locate(cid) for cid in ("c1", "c2", "c3")]
        return found == [None] * 3 and await alive.nodes() == ["alive"]

    await eventually(gone, "expired", timeout=LEASE + SLACK)
    assert await alive.locate_user("alice") == [survivor]
    assert await alive.locate_user("carol") == []
    # No ghost keys: Redis deleted them (TTL), not just the readers' filter.
    raw, prefix = medium.raw, medium.prefix
    ghosts = [
        keys.presence_connection(prefix, "c1"),
        keys.presence_connection(prefix, "c2"),
        keys.presence_connection(prefix, "c3"),
        keys.presence_user(prefix, "carol"),
        keys.presence_node(prefix, "dead"),
    ]
    assert await raw.exists(*ghosts) == 0
    nodes_key = keys.presence_nodes(prefix)

    async def trimmed() -> bool:  # the survivor's heartbeat trims the node index
        return await raw.zscore(nodes_key, "dead") is None

    await eventually(trimmed, "trimmed from the node index", timeout=HEARTBEAT + SLACK)
    assert await raw.zrange(keys.presence_user(prefix, "alice"), 0, -1) == [b"c4"]
    assert await raw.exists(keys.presence_connection(prefix, "c4")) == 1


# -- Redis: repair --------------------------------------------------------------------


async def test_flushall_is_repaired_within_one_heartbeat(
    redis_presence_medium: RedisPresenceMedium,
) -> None:
    medium = redis_presence_medium
    a = await medium("n1", lease=LEASE)
    b = await medium("n2", lease=LEASE)
    reader = await medium(None)
    registrations = [reg("c1", "n1", "alice"), reg("c2", "n2", "alice"), reg("c3", "n1")]
    for r in registrations:
        await (a if r.node == "n1" else b).register(r)
    await medium.raw.flushall()

    async def repaired() -> bool:
        return (
            [await reader.locate(r.connection_id) for r in registrations] == registrations
            and await reader.locate_user("alice") == registrations[:2]
            and await reader.nodes() == ["n1", "n2"]
        )

    await eventually(repaired, "repaired", timeout=HEARTBEAT + SLACK)
    assert as_redis(a).stats.repaired >= 2


async def test_a_repair_never_overwrites_a_newer_registration(
    redis_presence_medium: RedisPresenceMedium,
) -> None:
    medium = redis_presence_medium
    a = as_redis(await medium("n1", lease=LEASE))
    b = await medium("n2", lease=LEASE)
    old = reg("c1", "n1", "alice")
    await a.register(old)
    await medium.raw.flushall()  # a must now re-assert c1, but b takes it first
    new = reg("c1", "n2", "bob")
    assert await b.register(new) in (None, old)  # old only if a's repair came first
    beats = a.stats.heartbeats
    # The second heartbeat from now surely started after b's register.
    two_beats = holds(lambda: a.stats.heartbeats >= beats + 2)
    await eventually(two_beats, "two heartbeats", timeout=2 * HEARTBEAT + SLACK)
    assert await a.locate("c1") == new
    assert await a.locate_user("alice") == []
    assert await a.locate_user("bob") == [new]
    assert a.stats.superseded == 1  # a forgot c1: it no longer re-asserts it
    assert await a.unregister(old) is False
    assert await b.locate("c1") == new


# -- Redis: outages -------------------------------------------------------------------


@pytest.fixture
def restart_guard(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session server, started again after the test if the test left it stopped."""
    try:
        yield redis_server
    finally:
        if redis_server.proc is None:
            redis_server.start()


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[Proxy]:
    """A cuttable TCP relay to the session server."""
    relay = Proxy(redis_server.port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.aclose()


async def test_a_redis_restart_is_repaired(
    redis_presence_medium: RedisPresenceMedium,
    restart_guard: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    medium = redis_presence_medium
    a = as_redis(await medium("n1", lease=LEASE))
    reader = as_redis(await medium(None))
    gone, kept = reg("c1", "n1", "alice"), reg("c2", "n1", "alice")
    await a.register(gone)

    restart_guard.stop()
    for lookup in (reader.locate("c1"), a.locate_user("alice"), reader.nodes()):
        with pytest.raises(BrokerError) as info:
            await lookup
        assert info.value.temporary
    # Writes while Redis is down do not raise; they are recorded for the heartbeat.
    assert await a.register(kept) is None
    assert await a.unregister(gone) is True

    failing = holds(lambda: a.stats.failed_heartbeats >= 2)
    await eventually(failing, "retrying", timeout=HEARTBEAT + SLACK)
    restart_guard.start()

    async def repaired() -> bool:
        try:
            return (
                await reader.locate("c2") == kept
                and await reader.locate_user("alice") == [kept]
                and await reader.nodes() == ["n1"]
            )
        except BrokerError:
            return False

    await eventually(repaired, "repaired", timeout=HEARTBEAT + SLACK)
    assert await reader.locate("c1") is None
    await eventually(holds(lambda: a.online), "a back online", timeout=HEARTBEAT + SLACK)
    assert a.stats.outages == reader.stats.outages == 1
    records = [r for r in caplog.records if r.name == LOGGER]
    lost = [r.message for r in records if r.levelno == logging.WARNING]
    back = [r.message for r in records if r.levelno == logging.INFO and "again" in r.message]
    assert len(lost) == 2, lost  # one per presence, not one per retry
    assert len(back) == 2, back


async def test_writes_during_a_partition_land_on_recovery(
    proxy: Proxy, redis_presence_medium: RedisPresenceMedium
) -> None:
    """Redis keeps its data while one node cannot reach it (deferred writes matter)."""
    medium = redis_presence_medium
    a = as_redis(await medium("n1", lease=LEASE, url=proxy.url))
    b = as_redis(await medium("n2", lease=LEASE))
    removed, taken = reg("c1", "n1", "alice"), reg("c9", "n2", "bob")
    await a.register(removed)
    await b.register(taken)

    proxy.cut()
    assert await a.unregister(removed) is True
    added, takeover = reg("c2", "n1", "alice"), reg("c9", "n1", "carol")
    assert await a.register(added) is None
    assert await a.register(takeover) is None  # b's c9 is replaced, unseen
    with pytest.raises(BrokerError) as info:
        await a.locate("c1")
    assert info.value.temporary
    assert await b.locate("c1") == removed  # a's removal has not landed yet
    proxy.heal()

    async def landed() -> bool:
        return (
            await b.locate("c1") is None
            and await b.locate("c2") == added
            and await b.locate("c9") == takeover
        )

    await eventually(landed, "applied", timeout=HEARTBEAT + SLACK)
    assert await b.locate_user("alice") == [added]
    assert await b.locate_user("bob") == []
    assert await b.locate_user("carol") == [takeover]
    assert a.stats.unreported_takeovers == 1
    beats = b.stats.heartbeats
    two_beats = holds(lambda: b.stats.heartbeats >= beats + 2)
    await eventually(two_beats, "two heartbeats", timeout=2 * HEARTBEAT + SLACK)
    assert b.stats.superseded == 1  # b forgot its c9
    assert await b.unregister(taken) is False
    assert await b.locate("c9") == takeover


# -- Redis: cost ----------------------------------------------------------------------


async def test_round_trips_per_operation(redis_presence_medium: RedisPresenceMedium) -> None:
    a = as_redis(await redis_presence_medium("n1"))
    for user, count in (("alice", 3), ("bob", 0)):
        for i in range(count):
            await a.register(reg(f"{user}{i}", "n1", user))
    r = reg("c1", "n1", "alice")
    trips = a.stats.round_trips
    await a.register(r)
    assert a.stats.round_trips == trips + 1
    await a.locate_user("alice")
    assert a.stats.round_trips == trips + 3
    await a.locate_user("bob")
    assert a.stats.round_trips == trips + 4
    await a.unregister(r)
    assert a.stats.round_trips == trips + 5


async def test_a_heartbeat_for_10000_connections_is_a_few_round_trips(
    redis_presence_medium: RedisPresenceMedium, restart_guard: RedisServer
) -> None:
    """Seeded while Redis is down: one by one, 10,000 registers take ~5 s here."""
    medium = redis_presence_medium
    lease = scaled(3.0)  # a 10,000-entry heartbeat must fit well inside it on slow machines
    a = as_redis(await medium("n1", lease=lease))
    registrations = [reg(f"c{i}", "n1", f"user{i % 100}") for i in range(10_000)]
    restart_guard.stop()
    for r in registrations:
        assert await a.register(r) is None
    restart_guard.start()
    await eventually(holds(lambda: a.online), "recovered", timeout=lease / 3 + SLACK)
    assert await a.locate("c9999") == registrations[-1]

    async def script_calls() -> int:  # successful ones (a NOSCRIPT is a failed call)
        stats = (await medium.raw.info("commandstats")).get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))

    trips, scripts = a.stats.round_trips, await script_calls()
    target = a.stats.heartbeats + 1
    await eventually(holds(lambda: a.stats.heartbeats >= target), "a beat", lease / 3 + SLACK)
    assert a.stats.round_trips - trips <= 3  # 10,000 / (500 per call * 10 per trip), lease
    assert await script_calls() - scripts <= 10_000 // 500 + 1
    assert a.stats.repaired == 0  # a steady beat renews, it re-creates nothing
    assert await a.locate_user("user7") == sorted(
        (r for r in registrations if r.user == "user7"), key=lambda r: r.connection_id
    )
