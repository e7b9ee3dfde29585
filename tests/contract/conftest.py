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
* ``await broker_factory.settle()`` broadcasts a fence from a live broker and waits
  until every live broker has it: whatever was published before has arrived
  by then (Redis delivers one connection's messages in order), so tests can
  assert that something did *not* arrive without sleeping.

Times are in seconds scaled by ``WSGATE_TEST_TIME_SCALE`` (:func:`scaled`).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from contract._media import Medium, MemoryMedium, RedisMedium, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session (restart it with stop() + start())."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(
            "redis-server is not on PATH; the broker contract suite needs a real Redis: "
            "run `make system-deps` or `apt-get install -y redis-server`",
            pytrace=False,
        )
    server = RedisServer(executable, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
