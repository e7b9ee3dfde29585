"""Shared fixtures: gateways in process (port 0), tokens, and ``wsgate`` subprocesses.

* ``gateway(**fields)`` starts a :class:`~wsgate.Node` and :class:`~wsgate.Server`
  on a free port, with the test secret and any config fields changed (by their
  unique names, see :func:`wsgate.config.replace`); gateways started with the
  same ``bus=MemoryBus()`` form one in-process cluster; ``gw`` is one started with
  the defaults. Clients opened with ``Gateway.connect`` are closed, then the
  servers stopped, at teardown.
* ``mint(user, **grants)`` mints a token the gateways accept.
* ``wsgate_serve(*args, env=...)`` runs ``wsgate serve`` as a subprocess and
  waits for its ``listening on`` line; ``wsgate_run(*args, env=...)`` runs any
  ``wsgate`` command to completion. Both start from an environment without
  ``WSGATE_*`` variables.

Time is counted in the unit of :mod:`integration._client` (``WSGATE_TEST_TIME_SCALE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

# pytest's default (prepend) import mode puts tests/ on sys.path for this file.
from contract._media import RedisServer
from integration._client import Client, connect, scaled
from wsgate import Node, Server, load_config, mint_token
from wsgate.broker.memory import MemoryBroker, MemoryBus, MemoryPresence
from wsgate.config import Config, replace

SECRET = "integration-test-secret-" + "0123456789abcdef" * 2
"""HS256 secret of every in-process gateway (the ``secret`` fixture, for subprocesses)."""


def make_config(**fields: Any) -> Config:
    """The defaults (no environment), the test secret, port 0, and ``fields``."""
    base = load_config(env={})
    return replace(base, **{"jwt_secret": SECRET, "port": 0, **fields})


@dataclass
class Gateway:
    """One in-process node and its server."""

    node: Node
    server: Server
    clients: list[Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    async def connect(self, token: str | None = None, **kwargs: Any) -> Client:
        """A client of this gateway (see :func:`integration._client.connect`)."""
        client = await connect(self.url, token, **kwargs)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.server.stop()


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway() -> AsyncIterator[StartGateway]:
    """Factory: ``await gateway(**config_fields)`` starts a gateway on a free port."""
    started: list[Gateway] = []

    async def start(*, bus: MemoryBus | None = None, **fields: Any) -> Gateway:
        # Gateways given the same MemoryBus form one in-process cluster.
        backends: dict[str, Any] = {}
        if bus is not None:
            backends = {"broker": MemoryBroker(bus), "presence": MemoryPresence(bus)}
        node = Node(make_config(**fields), **backends)
        server = Server(node)
        await server.start()
        gateway = Gateway(node, server)
        started.append(gateway)
        return gateway

    yield start
    for gateway in reversed(started):
        await gateway.stop()


@pytest.fixture
async def gw(gateway: StartGateway) -> Gateway:
    """A gateway with the default configuration (JWT auth with :data:`SECRET`)."""
    return await gateway()


@pytest.fixture
def secret() -> str:
    return SECRET


@pytest.fixture
def mint() -> Callable[..., str]:
    """``mint(user="alice", subscribe=[...], ...)``: a token signed with :data:`SECRET`."""
    return partial(mint_token, SECRET)


# -- subprocesses ---------------------------------------------------------------------

_LISTENING = re.compile(r"listening on (ws://\S+)")


def cli_env(**variables: str) -> dict[str, str]:
    """This process's environment without ``WSGATE_*`` variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(variables)
    return env


@dataclass
class ServeProcess:
    """A running ``wsgate serve``."""

    proc: subprocess.Popen[str]
    url: str
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def wsgate_run() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``wsgate_run(*args, env={...})``: run ``python -m wsgate.cli ARGS`` to completion."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wsgate.cli", *args],
            env=cli_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=scaled(30),
            check=False,
        )

    return run


@pytest.fixture
def wsgate_serve(
    tmp_path: Path,
) -> Iterator[Callable[..., contextlib.AbstractAsyncContextManager[ServeProcess]]]:
    """``async with wsgate_serve(*args, env={...}) as served``: a ``wsgate serve`` on port 0.

    Waits for the ``listening on`` line; the process is killed on exit if still running.
    """

    logs = itertools.count()

    @contextlib.asynccontextmanager
    async def serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[ServeProcess]:
        log = tmp_path / f"serve-{next(logs)}.log"
        with log.open("w", encoding="utf-8") as stderr:
            proc = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", "wsgate.cli", "serve", "--port", "0", *args],
                env=cli_env(**(env or {})),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        with proc:
            try:
                assert proc.stdout is not None
                async with asyncio.timeout(scaled(15)):
                    line = await asyncio.to_thread(proc.stdout.readline)
                match = _LISTENING.search(line)
                assert match, f"no 'listening on' line: {line!r}; stderr: {log.read_text()}"
                yield ServeProcess(proc, match.group(1), log)
            finally:
                if proc.poll() is None:
                    proc.kill()
                await asyncio.to_thread(proc.wait, scaled(10))

    yield serve


# -- redis-server ---------------------------------------------------------------------


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
