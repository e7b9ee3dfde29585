"""Backend workers in real processes: a gateway, two workers and Redis.

A ``wsgate serve`` process (anonymous clients may call anything) and two
worker processes (:mod:`cluster.worker_app`) share a redis-server. Calls are
spread over both workers; a worker killed (SIGKILL) in the middle of a slow
call loses nothing: the other one takes the call over after ``claim_after``
and the client gets its answer within the call timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from contract._media import RedisServer
from integration._client import connect, scaled

WORKER_APP = Path(__file__).with_name("worker_app.py")
CLAIM_AFTER = 1.0  # seconds before a dead worker's call moves on


@dataclass
class WorkerProcess:
    """A running worker_app.py and the lines it printed."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().strip())
            self.changed.set()

    def kill(self) -> None:
        """SIGKILL, by PID: no goodbye to Redis, calls in hand are not acknowledged."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)


async def first_line(
    workers: list[WorkerProcess], wanted: Callable[[WorkerProcess, str], bool], timeout: float
) -> WorkerProcess:
    """The first worker to print a line ``wanted`` accepts; fails after ``timeout`` units."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                for worker in workers:
                    if any(wanted(worker, line) for line in worker.lines):
                        return worker
                    if worker.proc.returncode is not None:
                        raise AssertionError(f"worker {worker.name} exited: {worker.lines}")
                waits = [asyncio.ensure_future(w.changed.wait()) for w in workers]
                try:
                    await asyncio.wait(waits, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
                for worker in workers:
                    worker.changed.clear()
    except TimeoutError:
        raise AssertionError(
            f"no expected line within {scaled(timeout):g} s: "
            + "; ".join(f"{w.name}: {w.lines}" for w in workers)
        ) from None


@contextlib.asynccontextmanager
async def worker_processes(
    redis_url: str, prefix: str, names: list[str], logs: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """Start one worker_app.py per name and wait until each is ready; kill all at exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env["WSGATE_TEST_CLAIM_AFTER"] = str(scaled(CLAIM_AFTER))
    env["PYTHONUNBUFFERED"] = "1"
    workers: list[WorkerProcess] = []
    readers: list[asyncio.Task[None]] = []
    try:
        for name in names:
            with (logs / f"{name}.log").open("wb") as stderr:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(WORKER_APP),
                    redis_url,
                    prefix,
                    name,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                )
            worker = WorkerProcess(name, proc)
            workers.append(worker)
            readers.append(asyncio.create_task(worker.read()))
        for worker in workers:
            await first_line([worker], lambda w, line: line == f"ready {w.name}", timeout=15)
        yield workers
    finally:
        for worker in workers:
            worker.kill()
        for worker in workers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(scaled(10)):
                    await worker.proc.wait()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_calls_spread_over_workers_and_survive_a_killed_worker(
    redis_server: RedisServer, wsgate_serve, tmp_path: Path
) -> None:
    prefix = f"cluster-{uuid.uuid4().hex[:10]}"
    env = {"WSGATE_PREFIX": prefix, "WSGATE_ANONYMOUS_CALL": ">", "WSGATE_CALL_TIMEOUT": "10"}
    async with (
        wsgate_serve("--broker", redis_server.url, "--anonymous", env=env) as served,
        worker_processes(redis_server.url, prefix, ["w1", "w2"], tmp_path) as workers,
    ):
        client = await connect(served.url)
        try:
            # Spread: sequential calls go to whichever worker waits longest.
            answered_by: Counter[str] = Counter()
            for i in range(1, 41):
                reply = await client.roundtrip(
                    {"op": "call", "id": i, "method": "work.echo", "data": i}
                )
                assert reply["data"]["data"] == i
                answered_by[reply["data"]["worker"]] += 1
                if i >= 10 and len(answered_by) == 2:
                    break
            assert set(answered_by) == {"w1", "w2"}, answered_by

            # Kill the worker running a slow call: the other one answers it.
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            slow = {"key": "k1", "seconds": scaled(1.5)}
            await client.send(
                {"op": "call", "id": 100, "method": "work.slow", "data": slow, "timeout": 10}
            )
            victim = await first_line(
                workers, lambda w, line: line == f"started {w.name} k1", timeout=5
            )
            victim.kill()
            [survivor] = [w for w in workers if w is not victim]
            reply = await client.expect("ok", timeout=12, id=100)
            assert reply["data"] == {"worker": survivor.name, "data": slow}
            assert f"started {survivor.name} k1" in survivor.lines
            assert loop.time() - sent_at < 10  # within the call timeout

            # The survivor serves on alone.
            reply = await client.roundtrip({"op": "call", "id": 101, "method": "work.echo"})
            assert reply["data"]["worker"] == survivor.name
        finally:
            await client.close()
