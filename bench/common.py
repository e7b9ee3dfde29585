"""Pieces shared by the benchmark orchestrator, the load generator and the server apps.

The /proc accounting (per-process CPU, per-core CPU including softirq, VmRSS) comes from
``bench/candidates/fanout.py``, the harness that chose wsgate's server layer; this module
re-exports it and adds the JSON-lines command protocol every server-side app speaks
(see bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from candidates.fanout import (  # noqa: E402 - needs BENCH_DIR on sys.path
    CLK_TCK,
    CoreUsage,
    core_usage,
    ksoftirqd_pids,
    percentile_us,
    proc_cpu,
    proc_rss_kib,
    read_cpu_jiffies,
    stdin_reader,
    wait_for_quiet,
)

__all__ = [
    "BENCH_DIR",
    "CLIENT_CPU",
    "CLK_TCK",
    "HOST",
    "JWT_SECRET",
    "SERVER_CPU",
    "TOPIC",
    "TS_DIGITS",
    "CoreUsage",
    "Proc",
    "answer",
    "core_usage",
    "ksoftirqd_pids",
    "make_payload",
    "percentile_us",
    "proc_cpu",
    "proc_rss_kib",
    "publish_loop",
    "raise_nofile",
    "read_cpu_jiffies",
    "requests_loop",
    "serve_asgi",
    "serve_commands",
    "stdin_lines",
    "stdin_reader",
    "wait_for_quiet",
]

HOST = "127.0.0.1"
SERVER_CPU = "0"  # every server-side process: servers, Redis, publishers, backends
CLIENT_CPU = "1"  # the one load generator
TS_DIGITS = 19  # "%019d" % time.monotonic_ns() at the start of every payload
TOPIC = "bench.t"
# HS256 secret shared by the wsgate bench app and the load generator (tokens for W3/W4).
JWT_SECRET = "wsgate-bench-secret-" + "0123456789abcdef" * 3
NOFILE = 200_000


def make_payload(size: int) -> str:
    """One payload: the publish instant as 19 ASCII digits, padded with ``x`` to ``size``."""
    return f"{time.monotonic_ns():019d}".ljust(size, "x")


def raise_nofile(target: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE to ``target`` (root may raise the hard limit), else to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(target, soft), max(target, hard)))
        return max(target, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def answer(message: dict[str, Any]) -> None:
    """One JSON line on stdout: the answer to one command."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def stdin_lines() -> Callable[[], Awaitable[bytes]]:
    """A coroutine function returning the next stdin line (b"" at end of input).

    A pipe or socket (as the orchestrator opens) is read by the event loop itself; any
    other stdin (a file, /dev/null, a terminal) by a worker thread.
    """
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return (await stdin_reader()).readline
    loop = asyncio.get_running_loop()

    async def readline() -> bytes:
        return await loop.run_in_executor(None, sys.stdin.buffer.readline)

    return readline


async def serve_commands(handlers: dict[str, Handler]) -> None:
    """Print ``{"ready": true}``, then answer one JSON command per stdin line until quit/EOF.

    ``rss`` is answered here; a command without a handler gets ``{"error": ...}``.
    """
    answer({"ready": True})
    readline = await stdin_lines()
    while raw := await readline():
        line = raw.strip()
        if not line:
            continue
        command = json.loads(line)
        name = command.get("cmd")
        if name == "quit":
            return
        if name == "rss":
            answer({"rss_kib": proc_rss_kib(os.getpid())})
            continue
        handler = handlers.get(name)
        if handler is None:
            answer({"error": f"unknown command {name!r}"})
            continue
        try:
            answer(await handler(command))
        except Exception as exc:  # report and keep serving: the orchestrator decides
            answer({"error": f"{type(exc).__name__}: {exc}"})


async def serve_asgi(
    app: Any,
    port: int,
    handlers: dict[str, Handler],
    on_started: Callable[[], None] | None = None,
) -> int:
    """Serve an ASGI peer with uvicorn on ``port`` and answer commands until quit or EOF.

    uvicorn as an experienced user would set it for this: uvloop, the legacy
    ``websockets`` implementation, no per-message deflate, no uvicorn pings (the peer
    has its own heartbeat), no lifespan, no access log, backlog 4096.

    Returns:
        0, or 1 when uvicorn could not start.
    """
    config = uvicorn.Config(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        ws="websockets",
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # raises why uvicorn could not start
            return 1
        await asyncio.sleep(0.01)
    if on_started is not None:
        on_started()
    await serve_commands(handlers)
    server.should_exit = True
    try:
        await asyncio.wait_for(serving, 10)
    except (TimeoutError, asyncio.CancelledError):
        print("uvicorn did not stop in time", file=sys.stderr)
    return 0


PUBLISH_WINDOW = 64
"""Publish calls awaited at once when publishing as fast as accepted (rate 0)."""


async def publish_loop(
    publish: Callable[[str], Awaitable[Any]],
    count: int,
    size: int,
    rate: float,
    window: int = PUBLISH_WINDOW,
) -> dict[str, Any]:
    """Publish ``count`` payloads: as fast as accepted (rate 0) or on a schedule.

    Rate 0 keeps up to ``window`` publish calls in flight, started in order: what a
    throughput-minded backend does with an API whose ``await`` means "the broker has
    it" (one call at a time would measure one broker round trip per message, not the
    fan-out). With a rate, message i is due at ``t0 + i / rate``; the loop sleeps
    until then and awaits each call (a late message goes out as soon as possible,
    the next one keeps its slot).
    """
    clock = time.monotonic
    t0 = clock()
    if rate > 0:
        for i in range(count):
            delay = t0 + i / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            await publish(make_payload(size))
        return {"published": count, "seconds": clock() - t0}
    in_flight: set[asyncio.Future[Any]] = set()
    for _ in range(count):
        if len(in_flight) >= window:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()  # a failed publish fails the command
        in_flight.add(asyncio.ensure_future(publish(make_payload(size))))
    for future in await asyncio.gather(*in_flight, return_exceptions=True):
        if isinstance(future, BaseException):
            raise future
    return {"published": count, "seconds": clock() - t0}


async def requests_loop(
    request: Callable[[str, str], Awaitable[Any]],
    targets: Sequence[str],
    inflight: int,
    seconds: float,
    size: int,
) -> dict[str, Any]:
    """Keep ``inflight`` requests in flight, round-robin over ``targets``, for ``seconds``."""
    latencies: list[int] = []
    errors = 0
    first_error = ""
    counter = 0
    clock = time.monotonic_ns
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)

    async def worker() -> None:
        nonlocal counter, errors, first_error
        while clock() < deadline:
            target = targets[counter % len(targets)]
            counter += 1
            started = clock()
            try:
                await request(target, make_payload(size))
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            else:
                latencies.append(clock() - started)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = (clock() - t0) / 1e9
    latencies.sort()
    result: dict[str, Any] = {
        "ok": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "p50_us": percentile_us(latencies, 0.50),
        "p99_us": percentile_us(latencies, 0.99),
    }
    if first_error:
        result["first_error"] = first_error
    return result


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process started by the orchestrator, stopped by its own PID only."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    json_lines: bool = True  # speaks the command protocol on stdin/stdout
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        cpu: str | None,
        logdir: Path,
        json_lines: bool = True,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log = logdir / f"{name}.log"
        pinned = ["taskset", "-c", cpu, *argv] if cpu is not None else list(argv)
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *pinned,
                stdin=asyncio.subprocess.PIPE if json_lines else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if json_lines else stderr,
                stderr=stderr,
                env=env,
                limit=1 << 20,
                start_new_session=True,  # a Ctrl-C of the orchestrator reaches only it
            )
        return cls(name, proc, log, json_lines)

    def log_tail(self, lines: int = 3) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])[-400:]
        return ""

    async def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line on its stdout (other lines are skipped)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    code = await self.proc.wait()
                    raise RuntimeError(f"{self.name} exited ({code}): {self.log_tail()}")
                with contextlib.suppress(ValueError):
                    message = json.loads(raw)
                    if isinstance(message, dict):
                        return message

    async def ready(self, timeout: float = 30.0) -> None:
        message = await self.read(timeout)
        if message.get("ready") is not True:
            raise RuntimeError(f"{self.name}: expected ready, got {message}")

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")

    async def call(self, command: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
        self.send(command)
        reply = await self.read(timeout)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    async def stop(self) -> None:
        """quit (if it speaks the protocol), then SIGTERM, then SIGKILL, by this PID."""
        if self.proc.returncode is not None:
            return
        if self.json_lines:
            with contextlib.suppress(Exception):
                self.send({"cmd": "quit"})
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=3.0)
                return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=3.0)
                return
