"""Fixtures of the broker contract suite: every backend, one set of tests.

* ``redis_server`` (session): a real ``redis-server`` on a free loopback port,
  without persistence, stopped at the end by its PID. The suite *fails* (it
  does not skip) when ``redis-server`` is missing: ``make system-deps`` or
  ``apt-get install -y redis-server`` installs it.
* ``broker_factory`` is parametrized over ``memory`` and ``redis``: a shared
  medium (a :class:`~wsgate.broker.memory.MemoryBus`, or the Redis server under
  a key prefix unique to the test) on which ``await broker_factory(n)`` starts
  ``n`` brokers, each with a :class:`Recorder` as its handler. Everything
  started is closed at teardown. ``redis_medium`` is the Redis one alone.
* ``presence_factory`` is parametrized the same way for the presence suite:
  ``await presence_factory("n1")`` starts a presence as node ``n1`` (``None``:
  read-only) on one medium (:mod:`contract._presence`); ``redis_presence_medium``
  is the Redis one alone.
* ``await broker_factory.settle()`` broadcasts a fence from a live broker and waits
  until every live broker has it: whatever was published before has arrived
  by then (Redis delivers one connection's messages in order), so tests can
  assert that something did *not* arrive without sleeping.

Times are in seconds scaled by ``WSGATE_TEST_TIME_SCALE`` (:func:`scaled`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from contract._media import Medium, MemoryMedium, RedisMedium, RedisServer
from contract._presence import MemoryPresenceMedium, PresenceMedium, RedisPresenceMedium


@pytest.fixture(params=["memory", "redis"])
async def broker_factory(request: pytest.FixtureRequest) -> AsyncIterator[Medium]:
    """A medium of each backend (Redis: the session server, a per-test prefix).

    ``await broker_factory(n)`` starts ``n`` brokers on it; ``broker_factory.node(id)``
    one more.
    """
    if request.param == "memory":
        medium: Medium = MemoryMedium()
    else:
        medium = RedisMedium(request.getfixturevalue("redis_server"))
    try:
        yield medium
    finally:
        await medium.aclose()


@pytest.fixture
async def redis_medium(redis_server: RedisServer) -> AsyncIterator[RedisMedium]:
    """A Redis medium only, for the tests of Redis-specific behaviour."""
    medium = RedisMedium(redis_server)
    try:
        yield medium
    finally:
        await medium.aclose()


# -- presence -------------------------------------------------------------------------
# (Media in contract._presence: a MemoryBus, or the session's Redis under a per-test
# prefix; ``await presence_factory("n1")`` starts a presence as node n1, ``None`` a
# read-only participant; all are closed at teardown.)


@pytest.fixture(params=["memory", "redis"])
async def presence_factory(request: pytest.FixtureRequest) -> AsyncIterator[PresenceMedium]:
    """A presence medium of each backend (Redis: the session server, a per-test prefix)."""
    if request.param == "memory":
        medium: PresenceMedium = MemoryPresenceMedium()
    else:
        medium = RedisPresenceMedium(request.getfixturevalue("redis_server"))
    try:
        yield medium
    finally:
        await medium.aclose()


@pytest.fixture
async def redis_presence_medium(redis_server: RedisServer) -> AsyncIterator[RedisPresenceMedium]:
    """A Redis presence medium only, for the tests of leases, repair and outages."""
    medium = RedisPresenceMedium(redis_server)
    try:
        yield medium
    finally:
        await medium.aclose()
