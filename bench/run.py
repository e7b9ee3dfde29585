"""wsgate benchmark suite: every workload against wsgate and its peers, one table.

Usage (from the repository root; ``make bench`` runs it with ``BENCH_ARGS``)::

    .venv/bin/python bench/run.py [--workloads W1 W2 W3 W4 W5] [--peers wsgate nats
        socketio channels] [--runs 3] [--quick] [--no-docs] [--json FILE]

Every server-side process (servers, Redis, publishers, backends) runs pinned to core 0,
the one load generator (bench/loadgen.py) to core 1; all listen on 127.0.0.1 and are
started here and stopped by their own PIDs. bench/README.md explains each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_DIR,
    CLIENT_CPU,
    HOST,
    JWT_SECRET,
    PUBLISH_WINDOW,
    SERVER_CPU,
    TOPIC,
    Proc,
    core_usage,
    ksoftirqd_pids,
    proc_cpu,
    proc_rss_kib,
    raise_nofile,
    read_cpu_jiffies,
    wait_for_quiet,
)

ROOT = BENCH_DIR.parent
SERVERS = BENCH_DIR / "servers"
DOCS = ROOT / "docs" / "benchmarks.md"
PY = sys.executable
WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
PEERS = ("wsgate", "nats", "socketio", "channels")
GENERATOR_LIMIT_PCT = 90.0
NOISE_FRACTION = 0.1
PUBLISHER_GRACE_S = 5.0


@dataclass(frozen=True)
class Sizes:
    subscribers: int = 1000
    messages: int = 1000
    size: int = 100
    devices: int = 100
    inflight: int = 100
    request_seconds: float = 10.0
    idle: int = 5000
    big_idle: int = 50_000  # wsgate only; 0 skips
    big_sources: int = 8  # 127.0.0.2 .. 127.0.0.9
    steady: tuple[tuple[int, float], ...] = ((20, 10.0), (300, 10.0))  # (msg/s, seconds)
    max_wait: float = 60.0  # per measurement: a slower peer is cut off ("incomplete")
    idle_timeout: float = 5.0  # no delivery for this long: the rest is lost


FULL = Sizes()
QUICK = Sizes(
    subscribers=20,
    messages=50,
    devices=10,
    inflight=10,
    request_seconds=2.0,
    idle=200,
    big_idle=0,
    steady=((20, 1.0), (100, 1.0)),
    max_wait=15.0,
    idle_timeout=3.0,
)


# --------------------------------------------------------------------------- measurement


@dataclass
class Measure:
    """One figure of one run."""

    value: float  # the row's figure (deliveries/s, requests/s, KiB/conn, conn/s)
    lost: int | None = None
    errors: int | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    max_us: float | None = None
    server_cpu_s: float | None = None
    server_cpu_pct: float | None = None
    gen_core_pct: float | None = None
    deliveries: int | None = None
    incomplete: bool = False
    noisy: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s_per_million(self) -> float | None:
        if self.server_cpu_s is None or not self.deliveries:
            return None
        return 1e6 * self.server_cpu_s / self.deliveries


class Window:
    """CPU of both sides over a measurement, from /proc (server side includes core-0 softirq)."""

    def __init__(self, server_pids: list[int], gen_pid: int) -> None:
        self.server_pids, self.gen_pid = server_pids, gen_pid
        self.softirqd = ksoftirqd_pids()
        self.t0 = time.monotonic()
        self.server0 = [sum(proc_cpu(pid)) for pid in server_pids]
        self.gen0 = sum(proc_cpu(gen_pid))
        self.self0 = time.process_time()
        self.cores0 = read_cpu_jiffies()
        self.softirqd0 = {cpu: sum(proc_cpu(pid)) for cpu, pid in self.softirqd.items()}

    def finish(self) -> dict[str, float]:
        cores1 = read_cpu_jiffies()
        wall = time.monotonic() - self.t0
        server = sum(
            sum(proc_cpu(pid)) - before
            for pid, before in zip(self.server_pids, self.server0, strict=True)
        )
        gen = sum(proc_cpu(self.gen_pid)) - self.gen0
        mine = time.process_time() - self.self0
        softirqd = {
            cpu: sum(proc_cpu(pid)) - self.softirqd0[cpu] for cpu, pid in self.softirqd.items()
        }
        core0 = core_usage(self.cores0, cores1, SERVER_CPU, softirqd.get(SERVER_CPU, 0.0))
        core1 = core_usage(self.cores0, cores1, CLIENT_CPU, softirqd.get(CLIENT_CPU, 0.0))
        ours = server + gen + mine + sum(softirqd.values())
        other = max(0.0, core0.task_s + core1.task_s - ours)
        server_cost = server + core0.softirq_s
        return {
            "wall_s": wall,
            "server_cpu_s": server_cost,
            "server_cpu_pct": 100 * server_cost / wall if wall else math.nan,
            "server_core_pct": core0.busy_pct,
            "gen_cpu_s": gen,
            "gen_core_pct": core1.busy_pct,
            "other_s": other,
            # clock ticks are 10 ms: short windows are not called noisy for a tick or two
            "noisy": float(other > max(NOISE_FRACTION * wall, 0.05)),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.returncode is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log_tail()}")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name}: port {port} not open after {timeout} s")


@dataclass
class Server:
    """One server of a peer: its process, WebSocket URL and (nats) client port."""

    proc: Proc
    url: str
    client_port: int = 0


class Stage:
    """The processes of one run; all stopped (by PID) when the run ends."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.server_side: list[Proc] = []
        self.counter = 0

    async def start(self, name: str, argv: list[str], *, cpu: str, json_lines: bool = True) -> Proc:
        self.counter += 1
        proc = await Proc.start(
            f"{self.counter:02d}-{name}", argv, cpu=cpu, logdir=self.logdir, json_lines=json_lines
        )
        self.procs.append(proc)
        if cpu == SERVER_CPU:
            self.server_side.append(proc)
        return proc

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()

    async def redis(self) -> str:
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", HOST]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        proc = await self.start("redis", argv, cpu=SERVER_CPU, json_lines=False)
        await wait_port(port, proc)
        return f"redis://{HOST}:{port}/0"

    async def app(self, peer: str, argv: list[str]) -> Server:
        script = SERVERS / f"{peer}_app.py"
        if not script.exists():
            raise RuntimeError(f"{script.relative_to(ROOT)} missing")
        port = free_port()
        proc = await self.start(peer, [PY, str(script), "--port", str(port), *argv], cpu=SERVER_CPU)
        await proc.ready(timeout=60)
        path = {
            "wsgate": "/ws",
            "socketio": "/socket.io/?EIO=4&transport=websocket",
            "channels": "/ws/",
        }[peer]
        return Server(proc, f"ws://{HOST}:{port}{path}")

    async def nats(self, count: int = 1) -> list[Server]:
        """``count`` nats-servers; two or more form a cluster (routes to each other)."""
        ports = [(free_port(), free_port(), free_port()) for _ in range(count)]
        servers: list[Server] = []
        for i, (client, ws, route) in enumerate(ports):
            conf = [
                f"listen: {HOST}:{client}",
                f'websocket {{ listen: "{HOST}:{ws}", no_tls: true }}',
                "max_payload: 1048576",
                "write_deadline: 30s",
            ]
            if count > 1:
                routes = ", ".join(
                    f"nats-route://{HOST}:{r}" for j, (_, _, r) in enumerate(ports) if j != i
                )
                conf.append(
                    f"cluster {{ name: bench, listen: {HOST}:{route}, routes: [{routes}] }}"
                )
            path = self.logdir / f"nats-{self.counter}-{i}.conf"
            path.write_text("\n".join(conf) + "\n")
            proc = await self.start(
                f"nats-server{i}",
                ["nats-server", "-c", str(path)],
                cpu=SERVER_CPU,
                json_lines=False,
            )
            servers.append(Server(proc, f"ws://{HOST}:{ws}", client))
        for server in servers:
            await wait_port(server.client_port, server.proc)
            await wait_port(int(server.url.rsplit(":", 1)[1]), server.proc)
        if count > 1:
            await asyncio.sleep(1.5)  # routes connect
        return servers

    async def loadgen(self) -> Proc:
        proc = await self.start("loadgen", [PY, str(BENCH_DIR / "loadgen.py")], cpu=CLIENT_CPU)
        await proc.ready()
        return proc

    async def helper(self, script: str, argv: list[str]) -> Proc:
        proc = await self.start(
            script.removesuffix(".py"), [PY, str(SERVERS / script), *argv], cpu=SERVER_CPU
        )
        await proc.ready(timeout=60)
        return proc

    def window(self, gen: Proc) -> Window:
        return Window([p.pid for p in self.server_side], gen.pid)


@contextlib.asynccontextmanager
async def stage(logdir: Path) -> AsyncIterator[Stage]:
    st = Stage(logdir)
    try:
        yield st
    finally:
        await st.stop()


async def open_clients(
    gen: Proc, wire: str, urls: list[str], count: int, mode: str, **extra: Any
) -> dict[str, Any]:
    opened = await gen.call(
        {"cmd": "open", "wire": wire, "urls": urls, "count": count, "mode": mode, **extra},
        timeout=300,
    )
    if opened["open"] != count:
        raise RuntimeError(f"opened {opened['open']}/{count}: {opened['first_error']}")
    return opened


# --------------------------------------------------------------------------- workloads


FLUSH_INTERVAL: float | None = None
"""--flush-interval: wsgate's server.flush_interval in the fan-out workloads, or its default."""


async def fanout_servers(
    st: Stage, peer: str, nodes: int, pack: bool = True
) -> tuple[list[str], Proc]:
    """Start ``nodes`` servers of ``peer``; the WS URLs and the process to publish through."""
    if peer == "nats":
        servers = await st.nats(nodes)
        publisher = await st.helper("nats_pub.py", ["--port", str(servers[0].client_port)])
        return [s.url for s in servers], publisher
    extra: list[str] = [] if peer != "wsgate" else (["--pack"] if pack else ["--no-pack"])
    if peer == "wsgate" and FLUSH_INTERVAL is not None:
        extra += ["--flush-interval", str(FLUSH_INTERVAL)]
    if nodes > 1:
        redis = await st.redis()
        servers = [
            await st.app(peer, ["--redis", redis, "--node", str(i), *extra]) for i in range(nodes)
        ]
    else:
        servers = [await st.app(peer, extra)]
    return [s.url for s in servers], servers[0].proc


async def publish_and_drain(
    st: Stage,
    gen: Proc,
    publisher: Proc,
    sizes: Sizes,
    *,
    subscribers: int,
    count: int,
    rate: float,
) -> Measure:
    await gen.call({"cmd": "arm"})
    window = st.window(gen)
    expected = subscribers * count
    sent_ns = time.monotonic_ns()
    publisher.send(
        {"cmd": "publish", "topic": TOPIC, "count": count, "size": sizes.size, "rate": rate}
    )
    published = asyncio.ensure_future(publisher.read(sizes.max_wait + 60))
    drained = await gen.call(
        {
            "cmd": "drain",
            "expected": expected,
            "max_wait": sizes.max_wait,
            "idle_timeout": sizes.idle_timeout + (count / rate if rate else 0),
        },
        timeout=sizes.max_wait + 30,
    )
    cpu = window.finish()
    notes: dict[str, Any] = {}
    try:
        reply = await asyncio.wait_for(published, PUBLISHER_GRACE_S)
        notes["publish_s"] = reply.get("seconds")
        if "error" in reply:
            raise RuntimeError(f"publish failed: {reply['error']}")
    except TimeoutError:
        notes["publish_unfinished"] = True
    received = drained["received"]
    wall = max(1e-9, (drained["last_ns"] - sent_ns) / 1e9) if received else math.nan
    return Measure(
        value=received / wall if received else 0.0,
        lost=expected - received,
        p50_us=drained["p50_us"],
        p99_us=drained["p99_us"],
        max_us=drained["max_us"],
        deliveries=received,
        incomplete=not drained["complete"],
        **cpu_fields(cpu),
        extra=notes | cpu | {"frames": drained["frames"], "wall_s": wall},
    )


async def fanout(
    logdir: Path, peer: str, sizes: Sizes, nodes: int, pack: bool = True
) -> dict[str, Measure]:
    async with stage(logdir) as st:
        urls, publisher = await fanout_servers(st, peer, nodes, pack)
        gen = await st.loadgen()
        await open_clients(gen, peer, urls, sizes.subscribers, "sub")
        await asyncio.sleep(1.0 if nodes > 1 else 0.3)  # interest reaches the other node
        m = await publish_and_drain(
            st, gen, publisher, sizes, subscribers=sizes.subscribers, count=sizes.messages, rate=0
        )
        return {"deliveries/s": m}


async def w1(logdir: Path, peer: str, sizes: Sizes, pack: bool = True) -> dict[str, Measure]:
    return await fanout(logdir, peer, sizes, 1, pack)


async def w2(logdir: Path, peer: str, sizes: Sizes) -> dict[str, Measure]:
    return await fanout(logdir, peer, sizes, 2)


async def w3(logdir: Path, peer: str, sizes: Sizes) -> dict[str, Measure]:
    if peer == "channels":
        raise NotApplicable("Channels has no request/response")
    command = {
        "cmd": "requests",
        "count": sizes.devices,
        "inflight": sizes.inflight,
        "seconds": sizes.request_seconds,
        "size": sizes.size,
    }
    async with stage(logdir) as st:
        if peer == "wsgate":
            redis = await st.redis()
            server = await st.app("wsgate", ["--redis", redis])
            gen = await st.loadgen()
            await open_clients(gen, peer, [server.url], sizes.devices, "device")
            requester = await st.helper("wsgate_backend.py", ["--redis", redis])
        elif peer == "nats":
            (server,) = await st.nats(1)
            gen = await st.loadgen()
            await open_clients(gen, peer, [server.url], sizes.devices, "device")
            requester = await st.helper("nats_pub.py", ["--port", str(server.client_port)])
        else:
            server = await st.app(peer, [])
            gen = await st.loadgen()
            await open_clients(gen, peer, [server.url], sizes.devices, "device")
            requester = server.proc
        await asyncio.sleep(0.3)
        window = st.window(gen)
        result = await requester.call(command, timeout=sizes.request_seconds + 60)
        cpu = window.finish()
        return {
            "requests/s": Measure(
                value=result["ok"] / result["seconds"],
                errors=result["errors"],
                p50_us=result["p50_us"],
                p99_us=result["p99_us"],
                deliveries=result["ok"],
                **cpu_fields(cpu),
                extra=cpu | {k: v for k, v in result.items() if k == "first_error"},
            )
        }


async def idle(logdir: Path, peer: str, connections: int, sources: int = 1) -> dict[str, Measure]:
    async with stage(logdir) as st:
        extra: dict[str, Any] = {}
        if peer == "nats":
            (server,) = await st.nats(1)
        else:
            argv = ["--max-connections", str(connections + 1000)] if peer == "wsgate" else []
            server = await st.app(peer, argv)
        if peer == "wsgate":
            import wsgate  # noqa: PLC0415 - only to mint the idle connections' token

            extra["token"] = wsgate.mint_token(JWT_SECRET, user="idle", ttl=3600)
        gen = await st.loadgen()
        await asyncio.sleep(0.5)
        before = proc_rss_kib(server.proc.pid)
        window = st.window(gen)
        opened = await open_clients(
            gen, peer, [server.url], connections, "idle", sources=sources, **extra
        )
        cpu = window.finish()
        await asyncio.sleep(1.0)
        after = proc_rss_kib(server.proc.pid)
        await gen.call({"cmd": "close"}, timeout=120)
        common = {
            "server_cpu_s": cpu["server_cpu_s"],
            "server_cpu_pct": cpu["server_cpu_pct"],
            "gen_core_pct": cpu["gen_core_pct"],
            "noisy": bool(cpu["noisy"]),
        }
        return {
            "RSS KiB/conn": Measure(
                value=(after - before) / connections,
                extra={"rss_before_kib": before, "rss_after_kib": after},
            ),
            "setups/s": Measure(
                value=connections / opened["seconds"],
                errors=opened["errors"],
                extra=cpu,
                **common,
            ),
        }


async def w4(logdir: Path, peer: str, sizes: Sizes) -> dict[str, Measure]:
    return await idle(logdir, peer, sizes.idle)


async def w4_big(logdir: Path, peer: str, sizes: Sizes) -> dict[str, Measure]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < sizes.big_idle + 1000:
        raise RuntimeError(
            f"RLIMIT_NOFILE hard limit {hard} < {sizes.big_idle + 1000} and not raisable here "
            "(needs CAP_SYS_RESOURCE or a higher `ulimit -Hn`)"
        )
    return await idle(logdir, peer, sizes.big_idle, sizes.big_sources)


async def w5(logdir: Path, peer: str, sizes: Sizes) -> dict[str, Measure]:
    results: dict[str, Measure] = {}
    async with stage(logdir) as st:
        urls, publisher = await fanout_servers(st, peer, 1)
        gen = await st.loadgen()
        await open_clients(gen, peer, urls, sizes.subscribers, "sub")
        await asyncio.sleep(0.3)
        for rate, seconds in sizes.steady:
            count = int(rate * seconds)
            m = await publish_and_drain(
                st, gen, publisher, sizes, subscribers=sizes.subscribers, count=count, rate=rate
            )
            results[f"{rate} msg/s x {seconds:g} s: deliveries/s"] = m
    return results


class NotApplicable(Exception):
    pass


# --------------------------------------------------------------------------- orchestration


def cpu_fields(cpu: dict[str, Any]) -> dict[str, Any]:
    """The Measure fields of a measurement window's CPU figures."""
    return {
        "server_cpu_s": cpu["server_cpu_s"],
        "server_cpu_pct": cpu["server_cpu_pct"],
        "gen_core_pct": cpu["gen_core_pct"],
        "noisy": bool(cpu["noisy"]),
    }


@dataclass
class Row:
    workload: str
    peer: str
    figure: str
    runs: list[Measure] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    na: str = ""


Job = Callable[[Path, str, Sizes], Awaitable[dict[str, Measure]]]


def jobs_for(workload: str, peer: str, sizes: Sizes) -> list[tuple[str, str, Job]]:
    """(workload label, peer label, job) for one workload and peer."""
    if workload == "W1":
        jobs: list[tuple[str, str, Job]] = [("W1 fan-out 1 node", peer, w1)]
        if peer == "wsgate":

            async def unpacked(logdir: Path, peer: str, sizes: Sizes) -> dict[str, Measure]:
                return await w1(logdir, peer, sizes, pack=False)

            jobs.append(("W1 fan-out 1 node", "wsgate unpacked", unpacked))
        return jobs
    if workload == "W2":
        return [("W2 fan-out 2 nodes", peer, w2)]
    if workload == "W3":
        return [("W3 request/response", peer, w3)]
    if workload == "W4":
        jobs = [(f"W4 {sizes.idle:,} idle conns", peer, w4)]
        if peer == "wsgate" and sizes.big_idle:
            jobs.append((f"W4 {sizes.big_idle:,} idle conns", peer, w4_big))
        return jobs
    return [("W5 steady latency", peer, w5)]


async def run_job(
    rows: dict[tuple[str, str, str], Row],
    *,
    label: str,
    peer_label: str,
    peer: str,
    job: Job,
    sizes: Sizes,
    runs: int,
    logdir: Path,
) -> None:
    def row(figure: str) -> Row:
        key = (label, peer_label, figure)
        if key not in rows:
            rows[key] = Row(label, peer_label, figure)
        return rows[key]

    failures: list[str] = []
    for run in range(1, runs + 1):
        await wait_for_quiet(10.0)
        started = time.monotonic()
        try:
            async with asyncio.timeout(4 * sizes.max_wait + 120):
                measures = await job(logdir, peer, sizes)
        except NotApplicable as exc:
            row("-").na = f"n/a: {exc}"
            print(f"  {label} / {peer_label}: n/a ({exc})", flush=True)
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            failures.append(reason)
            print(f"  {label} / {peer_label} run {run}: FAILED {reason}", flush=True)
            if run == 1:  # a peer that cannot start will not start next time either
                break
            continue
        for figure, measure in measures.items():
            row(figure).runs.append(measure)
            print(
                f"  {label} / {peer_label} run {run}: {figure} {measure.value:,.1f}"
                f"{summary(measure)} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    if failures:
        existing = [r for k, r in rows.items() if k[:2] == (label, peer_label)]
        for r in existing or [row("-")]:
            r.failures.extend(failures)


def summary(m: Measure) -> str:
    parts = []
    if m.lost is not None:
        parts.append(f"lost {m.lost}")
    if m.errors:
        parts.append(f"errors {m.errors}")
    if m.p99_us is not None:
        parts.append(f"p50 {m.p50_us / 1000:.2f} ms p99 {m.p99_us / 1000:.2f} ms")
    if m.server_cpu_pct is not None:
        parts.append(f"server {m.server_cpu_pct:.0f}%")
    if m.gen_core_pct is not None:
        parts.append(f"gen core {m.gen_core_pct:.0f}%")
    if m.incomplete:
        parts.append("INCOMPLETE")
    if m.noisy:
        parts.append("noisy")
    return (", " + ", ".join(parts)) if parts else ""


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def value_spec(figure: str) -> str:
    return ".1f" if "KiB" in figure else ",.0f"


TABLE_HEADER = [
    "workload",
    "peer",
    "figure",
    "median",
    "min-max",
    "lost/err",
    "p50 ms",
    "p99 ms",
    "max ms",
    "server CPU %",
    "srv CPU s/1M",
    "gen core %",
    "notes",
]


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        if r.na or not r.runs:
            reason = r.na or ("failed: " + (r.failures[0] if r.failures else "no result"))
            cells = [r.workload, r.peer, r.figure if r.figure != "-" else "", r.na[:3] or "failed"]
            out.append([*cells, *[""] * (len(TABLE_HEADER) - len(cells) - 1), reason])
            continue
        ms = r.runs
        spec = value_spec(r.figure)
        values = [m.value for m in ms]
        lost = med([m.lost for m in ms])
        errors = med([m.errors for m in ms])
        gen = med([m.gen_core_pct for m in ms])
        notes = []
        if gen is not None and gen >= GENERATOR_LIMIT_PCT:
            notes.append("limited by generator")
        incomplete = sum(m.incomplete for m in ms)
        if incomplete:
            notes.append(f"incomplete ({incomplete}/{len(ms)} runs cut at the time bound)")
        noisy = sum(m.noisy for m in ms)
        if noisy:
            notes.append(f"noisy {noisy}/{len(ms)}")
        if r.failures:
            notes.append(f"{len(r.failures)} run(s) failed")
        lost_err = (
            fmt(lost, ",.0f")
            if lost is not None
            else fmt(errors, ",.0f")
            if errors is not None
            else "-"
        )
        out.append(
            [
                r.workload,
                r.peer,
                r.figure,
                format(statistics.median(values), spec),
                f"{format(min(values), spec)}-{format(max(values), spec)}" if len(ms) > 1 else "",
                lost_err,
                fmt(med([m.p50_us for m in ms]), ".2f", 1000),
                fmt(med([m.p99_us for m in ms]), ".2f", 1000),
                fmt(med([m.max_us for m in ms]), ".2f", 1000),
                fmt(med([m.server_cpu_pct for m in ms]), ".0f"),
                fmt(med([m.cpu_s_per_million for m in ms]), ".2f"),
                fmt(gen, ".0f"),
                "; ".join(notes),
            ]
        )
    return out


def render(rows: list[Row], markdown: bool) -> str:
    body = table_rows(rows)
    if markdown:
        lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(line[i]) for line in [TABLE_HEADER, *body]) for i in range(len(TABLE_HEADER))]
    lines = []
    for cells in [TABLE_HEADER, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine and docs


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "os": _os_release(),
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _cmd_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def source_revision() -> str:
    """The checkout measured: ``git describe --always --dirty``, or "unknown"."""
    rev = _cmd_version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return "unknown" if rev in ("not installed", "?") or "fatal" in rev else rev


def versions() -> dict[str, str]:
    found = {
        "nats-server": _cmd_version(["nats-server", "--version"]),
        "redis-server": _cmd_version(["redis-server", "--version"]),
    }
    for dist in (
        "wsgate",
        "picows",
        "uvloop",
        "msgspec",
        "redis",
        "hiredis",
        "nats-py",
        "python-socketio",
        "python-engineio",
        "uvicorn",
        "channels",
        "channels-redis",
        "django",
        "pyjwt",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def sizes_text(sizes: Sizes) -> list[str]:
    steady = ", ".join(f"{r} msg/s for {s:g} s" for r, s in sizes.steady)
    big = (
        f"; wsgate also {sizes.big_idle:,} connections from {sizes.big_sources} source "
        f"addresses (127.0.0.2-127.0.0.{1 + sizes.big_sources})"
        if sizes.big_idle
        else ""
    )
    return [
        f"- W1 fan-out, one node: {sizes.subscribers:,} subscribers on `{TOPIC}`, "
        f"{sizes.messages:,} messages of {sizes.size} B published as fast as the publish call "
        f"returns ({sizes.subscribers * sizes.messages:,} deliveries).",
        "- W2 fan-out, two nodes: the same sizes, subscribers split evenly over two nodes "
        "(wsgate, python-socketio and Channels through one redis-server; nats-server as a "
        "two-server cluster), published into node 0.",
        f"- W3 request/response: {sizes.devices} device connections, {sizes.inflight} requests "
        f"of {sizes.size} B in flight for {sizes.request_seconds:g} s, round-robin over the "
        "devices, timeout 5 s.",
        f"- W4 idle connections: {sizes.idle:,} connections{big}.",
        f"- W5 steady latency: {sizes.subscribers:,} subscribers, {steady}, published on a "
        "fixed schedule.",
        f"- Each measurement is bounded: a peer still delivering after {sizes.max_wait:g} s "
        f"(or silent for {sizes.idle_timeout:g} s) is cut off; its rate counts what arrived.",
    ]


# (workload prefix, peer, figure suffix, what, test on the wsgate medians, target text)
TARGETS: list[tuple[str, str, str, str, Callable[[dict[str, float]], bool], str]] = [
    ("W1", "wsgate", "deliveries/s", "packed", lambda m: m["value"] >= 1_200_000, ">= 1,200,000/s"),
    (
        "W1",
        "wsgate unpacked",
        "deliveries/s",
        "one message per frame",
        lambda m: m["value"] >= 550_000,
        ">= 550,000/s",
    ),
    ("W1", "wsgate", "deliveries/s", "lost", lambda m: m["lost"] == 0, "0 lost"),
    ("W2", "wsgate", "deliveries/s", "packed", lambda m: m["value"] >= 1_000_000, ">= 1,000,000/s"),
    ("W3", "wsgate", "requests/s", "through Redis", lambda m: m["value"] >= 75_000, ">= 75,000/s"),
    ("W3", "wsgate", "requests/s", "p99", lambda m: m["p99_ms"] <= 5, "p99 <= 5 ms"),
    ("W4 5", "wsgate", "RSS KiB/conn", "memory", lambda m: m["value"] <= 12, "<= 12 KiB"),
    ("W4 5", "wsgate", "setups/s", "setup rate", lambda m: m["value"] >= 7_000, ">= 7,000/s"),
    ("W5", "wsgate", "20 msg/s", "p99 at 20k/s", lambda m: m["p99_ms"] <= 5, "p99 <= 5 ms"),
    ("W5", "wsgate", "300 msg/s", "p99 at 300k/s", lambda m: m["p99_ms"] <= 15, "p99 <= 15 ms"),
    ("W5", "wsgate", "300 msg/s", "CPU at 300k/s", lambda m: m["cpu_pct"] <= 60, "CPU <= 60%"),
]


def targets_text(rows: list[Row]) -> list[str]:
    """The issue's targets beside wsgate's medians: met or missed."""
    lines = ["| workload | target | wsgate (median) | met |", "|---|---|---|---|"]
    for prefix, peer, figure, what, test, target in TARGETS:
        row = next(
            (
                r
                for r in rows
                if r.workload.startswith(prefix) and r.peer == peer and figure in r.figure
            ),
            None,
        )
        if row is None or not row.runs:
            continue
        runs = row.runs

        def med(values: list[float | None]) -> float:
            real = [v for v in values if v is not None]
            return statistics.median(real) if real else float("nan")

        m = {
            "value": med([x.value for x in runs]),
            "lost": med([x.lost for x in runs]),
            "p99_ms": med([x.p99_us for x in runs]) / 1000,
            "cpu_pct": med([x.server_cpu_pct for x in runs]),
        }
        shown = {
            "lost": f"{m['lost']:.0f} lost",
            "p99": f"p99 {m['p99_ms']:.1f} ms",
            "CPU": f"{m['cpu_pct']:.0f}% of a core",
        }
        key = next((k for k in shown if what.startswith(k) or k in what), None)
        number = f"{m['value']:,.0f}" if m["value"] >= 100 else f"{m['value']:.1f}"
        value = shown[key] if key else number
        lines.append(
            f"| {row.workload} ({what}) | {target} | {value} | {'yes' if test(m) else 'no'} |"
        )
    return lines


def runs_text(rows: list[Row]) -> str:
    """How many runs each peer's figures have, e.g. "3 runs per figure (peers: 1)"."""
    by_peer = {r.peer.split()[0]: max(len(x.runs) for x in rows if x.peer == r.peer) for r in rows}
    own = by_peer.get("wsgate", max(by_peer.values(), default=0))
    others = sorted({n for peer, n in by_peer.items() if peer != "wsgate"})
    text = f"{own} run(s) per wsgate figure"
    if others and others != [own]:
        text += f", {'/'.join(map(str, others))} per peer figure"
    elif others:
        text = f"{own} run(s) per figure"
    return text


def write_docs(
    rows: list[Row], sizes: Sizes, runs: int, args: argparse.Namespace, when: str
) -> None:
    info, vers = machine(), versions()
    failures = [f"- {r.workload} / {r.peer}: {f}" for r in rows for f in dict.fromkeys(r.failures)]
    shown = list(args.argv)
    if "--json" in shown:  # a local file name: not part of the recipe
        at = shown.index("--json")
        del shown[at : at + 2]
    shown = [a for a in shown if a != "--keep-logs"]
    command = "make bench" + (f" BENCH_ARGS='{' '.join(shown)}'" if shown else "")
    text = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` (`make bench`); do not edit by hand: rerun it. "
        "bench/README.md explains how each figure is measured.",
        "",
        f"Run: {when}, `{command}`, {runs_text(rows)}; the table shows the median "
        "and, with several runs, min-max of the figure.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores",
        f"- OS: {info['os']}, kernel {info['kernel']}",
        f"- Python {info['python']}",
        f"- Server side (servers, Redis, publishers, backends) pinned to core {SERVER_CPU}, "
        f"the one load generator (uvloop + picows) to core {CLIENT_CPU} (`taskset`); "
        "everything on 127.0.0.1.",
        "",
        "## Versions",
        "",
        *([f"- wsgate source: git {args.source} at the start of the run"] if args.source else []),
        *[f"- {name}: {version}" for name, version in vers.items()],
        "",
        "## Sizes",
        "",
        *sizes_text(sizes),
        "",
        "## Results",
        "",
        render(rows, markdown=True),
        "",
        "Columns: **median** of the runs (min-max beside); **lost/err** lost deliveries "
        "(fan-out) or failed requests (W3); latencies from the publish instant stamped in "
        "the payload to its receipt in the load generator (W3: request round trip in the "
        "backend); **server CPU %** server-side processes' CPU plus core-"
        f"{SERVER_CPU} softirq (loopback TCP work) over the measurement, in % of one core; "
        "**srv CPU s/1M** that CPU in seconds per million deliveries (W3: per million "
        "answered requests); **gen core %** how busy the generator's core was; at "
        f">= {GENERATOR_LIMIT_PCT:.0f}% the row says *limited by generator*: the figure is a "
        "lower bound for the server.",
        "",
        "## Targets",
        "",
        "The performance goals wsgate set itself on this machine, beside its medians. "
        "A throughput missed while the generator was the limit is a lower bound.",
        "",
        *targets_text(rows),
        "",
        "## Bench configuration of wsgate",
        "",
        "- `limits.rate_limit` = 1,000,000 msg/s and `limits.rate_burst` = 1,000,000 per "
        "connection (the default, 100 msg/s, would close W3 devices answering requests with "
        "4004).",
        "- `server.max_connections` above the W4 connection count; `server.handshake_timeout` "
        "60 s; keepalive pings every 300 s; `pack_messages` on (default) except the "
        "*wsgate unpacked* row.",
        "- Subscribers connect anonymously (subscribe grant `>`); W3 devices carry JWTs with "
        "`cid` claims `dev-0..`; W4 connections carry a JWT (verified at the upgrade).",
        "- W3: one node with `broker = redis://...`, the backend a separate process using "
        "`wsgate.connect_backend`.",
        "",
    ]
    noisy = sum(1 for r in rows if any(m.noisy for m in r.runs))
    limited = sum(1 for r in rows if "limited by generator" in " ".join(table_rows([r])[0]))
    text += [
        "## Reading these figures",
        "",
        f"- {limited} row(s) were limited by the generator and {noisy} row(s) were measured "
        "while processes outside the benchmark used more than 10% of a core (*noisy*); "
        "core-0 softirq then also holds some of their loopback traffic, which inflates "
        "*server CPU %*.",
        "- *server CPU %* can exceed 100: softirq work done during a system call may be "
        "counted both in the process's system time and in the core's softirq time.",
        "- Fan-out latencies in W1/W2 are queueing delays of a burst (every message "
        "published at once), not steady-state latencies; W5 gives those.",
        "- *As fast as accepted* (W1, W2) means up to "
        f"{PUBLISH_WINDOW} publish calls awaited at once, started in order, for every peer: "
        "one awaited call at a time would measure one broker round trip per message.",
        "- W5 at low rates: on this virtual machine each packet that wakes an idle receiver "
        "costs the sender about 20 us (every peer alike), so one publication to 1,000 idle "
        "connections takes about 20 ms of writes; its p99 mostly measures that.",
        "",
    ]
    if failures:
        text += ["## Failures", "", *failures, ""]
    DOCS.write_text("\n".join(text))


# --------------------------------------------------------------------------- main


async def orchestrate(args: argparse.Namespace, sizes: Sizes, logdir: Path) -> list[Row]:
    rows: dict[tuple[str, str, str], Row] = {}
    for workload in args.workloads:
        print(f"== {workload}", flush=True)
        for peer in args.peers:
            for label, peer_label, job in jobs_for(workload, peer, sizes):
                await run_job(
                    rows,
                    label=label,
                    peer_label=peer_label,
                    peer=peer,
                    job=job,
                    sizes=sizes,
                    runs=args.runs
                    if peer == "wsgate" or args.peer_runs is None
                    else args.peer_runs,
                    logdir=logdir,
                )
    return list(rows.values())


def load_json(path: Path) -> tuple[list[Row], Sizes, str]:
    """Rows, sizes and time of a run saved with --json."""
    saved = json.loads(path.read_text())
    raw_sizes = saved["sizes"] | {"steady": tuple(tuple(x) for x in saved["sizes"]["steady"])}
    rows = [
        Row(
            r["workload"],
            r["peer"],
            r["figure"],
            runs=[Measure(**m) for m in r["runs"]],
            failures=r["failures"],
            na=r["na"],
        )
        for r in saved["rows"]
    ]
    return rows, Sizes(**raw_sizes), saved["when"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--peer-runs",
        type=int,
        default=None,
        help="runs per figure for the peers (default: --runs); wsgate always gets --runs",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (smoke test)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="write the raw per-run results here")
    parser.add_argument(
        "--big-idle",
        type=int,
        help=f"connections of wsgate's large W4 run (default {FULL.big_idle:,}; 0 skips it)",
    )
    parser.add_argument(
        "--from-json", type=Path, help="measure nothing: print and document a --json file"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="wsgate's server.flush_interval in the fan-out workloads (default: wsgate's own)",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.runs = args.peer_runs = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    global FLUSH_INTERVAL  # noqa: PLW0603 - one setting for every server this run starts
    FLUSH_INTERVAL = args.flush_interval
    for tool in ("taskset", "redis-server", "nats-server"):
        if shutil.which(tool) is None:
            print(f"warning: {tool} not found; workloads needing it will fail", file=sys.stderr)
    raise_nofile()
    sizes = QUICK if args.quick else FULL
    if args.big_idle is not None:
        sizes = dataclasses.replace(sizes, big_idle=args.big_idle)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    logdir = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
    info = machine()
    print_header = print if args.from_json is None else (lambda *a, **k: None)
    print_header(
        f"wsgate bench: {', '.join(args.workloads)} x {', '.join(args.peers)}, {args.runs} "
        f"run(s){' (quick sizes)' if args.quick else ''}; {info['cpu']}, {info['cores']} "
        f"cores, {info['kernel']}, Python {info['python']}; logs in {logdir}",
        flush=True,
    )
    args.source = source_revision()
    if args.from_json is not None:
        rows, sizes, when = load_json(args.from_json)
        saved = json.loads(args.from_json.read_text())
        args.argv, args.runs = saved.get("argv", []), max(len(r.runs) for r in rows)
        args.source = saved.get("source", "")
    else:
        rows = asyncio.run(orchestrate(args, sizes, logdir))
    print()
    print(render(rows, markdown=False))
    if not args.no_docs:
        write_docs(rows, sizes, args.runs, args, when)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    if args.json is not None:
        raw = {
            "when": when,
            "argv": args.argv,
            "source": args.source,
            "machine": info,
            "versions": versions(),
            "sizes": dataclasses.asdict(sizes),
            "rows": [
                {
                    "workload": r.workload,
                    "peer": r.peer,
                    "figure": r.figure,
                    "na": r.na,
                    "failures": r.failures,
                    "runs": [dataclasses.asdict(m) for m in r.runs],
                }
                for r in rows
            ],
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    if args.keep_logs:
        print(f"logs kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
