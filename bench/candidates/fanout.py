"""Fan-out benchmark of WebSocket server candidates for wsgate's ``server/`` layer.

Usage (from the repository root)::

    .venv/bin/python bench/candidates/fanout.py [--subscribers 1000] [--messages 1000]
        [--size 100] [--runs 3] [--burst 1] [--only NAME ...] [--memory-connections 5000]

For every candidate and run, the orchestrator (this process, unpinned and mostly idle)
starts two children of this same script and drives them with one command per line on
their stdin; they answer with one JSON object per line on their stdout:

* ``server``: one candidate, pinned to CPU 0 (``taskset -c 0``), uvloop. It publishes
  ``--messages`` payloads of ``--size`` bytes to every subscriber from a loop inside the
  server process that yields to the event loop (``await asyncio.sleep(0)``) after every
  ``--burst`` messages.
* ``client``: ONE load generator pinned to CPU 1 (``taskset -c 1``), uvloop + picows
  client, that opens the N connections (batches of 200) and counts what it receives.

Each payload starts with 19 ASCII digits of ``time.monotonic_ns()`` taken when the
message is published (CLOCK_MONOTONIC is system-wide on Linux, so both processes read
the same clock); the client subtracts it from its own ``time.monotonic_ns()`` on receipt.
Deliveries/s is ``received / (last delivery - first publish)``. CPU time is sampled just
before the publish command and as soon as the client reports that it has everything (or
saw no progress for ``--idle-timeout`` seconds): per process from ``/proc/PID/stat`` and
per core from ``/proc/stat``. On loopback the receive-side TCP work of every delivery runs
in softirq on the *sending* core and is charged to no process, so the server's cost is
its user + sys time plus core 0's softirq time. CPU that other processes took on the two
cores is measured too; a run where they took more than 10% of a core is redone
(``--noise-retries``), since the machine may be shared. Idle memory is
``(VmRSS with K idle connections - VmRSS before) / K``. ``--json`` keeps every run;
``--render FILE`` prints the table of such a file again. See RESULTS.md for findings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_connect,
    ws_create_server,
)
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

HOST = "127.0.0.1"
SERVER_CPU = "0"
CLIENT_CPU = "1"
TS_DIGITS = 19  # time.monotonic_ns() as zero-padded ASCII digits at the payload start
CONNECT_BATCH = 200
BACKLOG = 2048
READ_BUFFER_INIT_SIZE = 2048
MAX_FRAME = 1 << 20
RUN_TIMEOUT_S = 60.0
CHILD_LIFETIME_S = 180  # SIGALRM backstop: a child kills itself even if we die
BUSY_FRACTION = 0.9  # a pinned core >= 90% busy over the fan-out is "the limit"
NOISE_FRACTION = 0.1  # other processes using > 10% of a core during a run: redo the run
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")
SCRIPT = str(Path(__file__).resolve())

CANDIDATES: dict[str, str] = {
    "websockets": "websockets asyncio server, websockets.broadcast() per message",
    "picows-send": "picows, WSTransport.send() per subscriber per message",
    "picows-coalesced": "picows, frame built once, per-tick flush, one write per connection",
    "picows-packed": "picows, per-tick flush, pending payloads packed into one frame (b'\\n')",
    "sansio-coalesced": "asyncio.Protocol + websockets ServerProtocol, coalesced like picows",
    "wsgate": "the wsgate server itself: node.publish(), JSON msg frames, packing on",
    "wsgate-unpacked": "the wsgate server itself, packing off (one message per frame)",
}
PACKED = {"picows-packed"}
WSGATE = {"wsgate", "wsgate-unpacked"}
# Candidates with a distinct per-connection memory profile (picows-* share one).
MEMORY_CANDIDATES = {"websockets", "picows-send", "sansio-coalesced", "wsgate"}


# --------------------------------------------------------------------------- helpers


def frame_header(length: int, opcode: int = 0x1) -> bytes:
    """Header of an unmasked (server-to-client) final frame carrying ``length`` bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def emit(event: str, **fields: Any) -> None:
    """Report one event to the orchestrator (a JSON line on stdout)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def proc_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, from /proc/PID/stat (clock-tick resolution)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of stat


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- servers


class Hub:
    """One candidate: its subscriber registry and how it publishes to them."""

    def __init__(self) -> None:
        self.target = 0
        self.reached = asyncio.Event()
        self.pauses = 0  # pause_writing() callbacks seen, where the candidate exposes them
        self.transport_kind = ""  # module of the first connection's TCP transport class

    def count(self) -> int:
        raise NotImplementedError

    def expect(self, subscribers: int) -> None:
        self.target = subscribers
        self.reached.clear()
        self.check()

    def check(self) -> None:
        if self.target and self.count() >= self.target:
            self.reached.set()

    async def listen(self) -> int:
        raise NotImplementedError

    def publish(self, payload: bytes) -> None:
        raise NotImplementedError


class WebsocketsHub(Hub):
    """Candidate 1: websockets' asyncio server and ``websockets.broadcast``."""

    def __init__(self) -> None:
        super().__init__()
        self.conns: set[ServerConnection] = set()
        self.server: Server | None = None

    def count(self) -> int:
        return len(self.conns)

    async def handler(self, ws: ServerConnection) -> None:
        self.transport_kind = self.transport_kind or type(ws.transport).__module__
        self.conns.add(ws)
        self.check()
        try:
            await ws.wait_closed()
        finally:
            self.conns.discard(ws)

    async def listen(self) -> int:
        # No compression (picows has none) and no keepalive pings (picows' are off too).
        self.server = await serve(
            self.handler,
            HOST,
            0,
            compression=None,
            ping_interval=None,
            max_size=MAX_FRAME,
            backlog=BACKLOG,
        )
        return int(self.server.sockets[0].getsockname()[1])

    def publish(self, payload: bytes) -> None:
        broadcast(self.conns, payload, text=True)


class PicowsSub(WSListener):
    """A picows server-side subscriber; also carries the coalescing state."""

    transport: WSTransport  # set in on_ws_connected, before the hub can see this subscriber

    def __init__(self, hub: PicowsHub) -> None:
        super().__init__()
        self.hub = hub
        self.write: Callable[[bytes], None] = _no_write
        self.pending: list[Any] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        raw = transport.underlying_transport  # aiofastnet's unless use_aiofastnet=False
        self.write = raw.write
        hub = self.hub
        hub.transport_kind = hub.transport_kind or type(raw).__module__
        hub.subs.add(self)
        hub.check()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # picows does not answer CLOSE by itself: echo it, then close the TCP connection.
        if frame.msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            transport.send_close(WSCloseCode.OK if code == WSCloseCode.NO_INFO else code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.hub.subs.discard(self)

    # Without these overrides picows logs a warning on every watermark crossing.
    def pause_writing(self) -> None:
        self.hub.pauses += 1

    def resume_writing(self) -> None:
        pass


def _no_write(data: bytes) -> None:
    raise RuntimeError("write before on_ws_connected")


class PicowsHub(Hub):
    def __init__(self) -> None:
        super().__init__()
        self.subs: set[PicowsSub] = set()
        self.server: asyncio.Server | None = None
        self.use_aiofastnet = True  # picows' default whenever aiofastnet is importable

    def count(self) -> int:
        return len(self.subs)

    def listener(self, request: WSUpgradeRequest) -> PicowsSub:
        return PicowsSub(self)

    async def listen(self) -> int:
        self.server = await ws_create_server(
            self.listener,
            HOST,
            0,
            read_buffer_init_size=READ_BUFFER_INIT_SIZE,
            max_frame_size=MAX_FRAME,
            use_aiofastnet=self.use_aiofastnet,
            backlog=BACKLOG,
        )
        return int(self.server.sockets[0].getsockname()[1])


class PicowsSendHub(PicowsHub):
    """Candidate 2: ``WSTransport.send`` for every subscriber, every message."""

    def publish(self, payload: bytes) -> None:
        text = WSMsgType.TEXT
        for sub in self.subs:
            sub.transport.send(text, payload)


class PicowsCoalescedHub(PicowsHub):
    """Candidate 3: frame built once per publication, one write per dirty connection/tick."""

    def __init__(self) -> None:
        super().__init__()
        self.dirty: list[PicowsSub] = []
        self.flush_scheduled = False

    def publish(self, payload: bytes) -> None:
        self.enqueue(frame_header(len(payload)) + payload)

    def enqueue(self, item: object) -> None:
        dirty = self.dirty
        for sub in self.subs:
            pending = sub.pending
            if not pending:
                dirty.append(sub)
            pending.append(item)
        if dirty and not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for sub in dirty:
            pending = sub.pending
            transport = sub.transport
            # Raw writes bypass picows' guards. Never write after CLOSE (data frames after
            # CLOSE break RFC 6455) or after disconnect (uvloop's transport raises
            # RuntimeError; aiofastnet's drops the data and logs warnings).
            if not (transport.is_close_frame_sent or transport.is_disconnected):
                try:
                    sub.write(pending[0] if len(pending) == 1 else b"".join(pending))
                except (OSError, RuntimeError):  # one broken peer must not stall the flush
                    transport.disconnect(graceful=False)
            pending.clear()


class PicowsPackedHub(PicowsCoalescedHub):
    """Candidate 4: like 3, but a connection's pending payloads become ONE frame."""

    def publish(self, payload: bytes) -> None:
        # (payload, its own frame): the single-message case still writes a shared frame.
        self.enqueue((payload, frame_header(len(payload)) + payload))

    def flush(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for sub in dirty:
            pending = sub.pending
            transport = sub.transport
            if not (transport.is_close_frame_sent or transport.is_disconnected):
                if len(pending) == 1:
                    data = pending[0][1]
                else:
                    body = b"\n".join([item[0] for item in pending])
                    data = frame_header(len(body)) + body
                try:
                    sub.write(data)
                except (OSError, RuntimeError):
                    transport.disconnect(graceful=False)
            pending.clear()


class SansIOConn(asyncio.Protocol):
    """Candidate 5: plain asyncio.Protocol driving websockets' sans-I/O ServerProtocol."""

    transport: asyncio.Transport  # set in connection_made

    def __init__(self, hub: SansIOHub) -> None:
        self.hub = hub
        self.proto = ServerProtocol(max_size=MAX_FRAME)
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Request):
                proto.send_response(proto.accept(event))
                if proto.state is State.OPEN:
                    self.hub.transport_kind = (
                        self.hub.transport_kind or type(self.transport).__module__
                    )
                    self.hub.subs.add(self)
                    self.hub.check()
            # Frames: the client only ever sends CLOSE; ServerProtocol answers it itself.
        self.send_protocol_data()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self.send_protocol_data()
        return None

    def send_protocol_data(self) -> None:
        transport = self.transport
        for data in self.proto.data_to_send():
            if data:
                transport.write(data)
            else:  # SEND_EOF: half-close; closing is simpler and equivalent here
                transport.close()
        if self.proto.state is not State.OPEN:
            self.hub.subs.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.subs.discard(self)

    def pause_writing(self) -> None:
        self.hub.pauses += 1

    def resume_writing(self) -> None:
        pass


class SansIOHub(Hub):
    def __init__(self) -> None:
        super().__init__()
        self.subs: set[SansIOConn] = set()
        self.dirty: list[SansIOConn] = []
        self.flush_scheduled = False
        self.server: asyncio.Server | None = None

    def count(self) -> int:
        return len(self.subs)

    async def listen(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SansIOConn(self), HOST, 0, backlog=BACKLOG)
        return int(self.server.sockets[0].getsockname()[1])

    def publish(self, payload: bytes) -> None:
        frame = frame_header(len(payload)) + payload
        dirty = self.dirty
        for conn in self.subs:
            pending = conn.pending
            if not pending:
                dirty.append(conn)
            pending.append(frame)
        if dirty and not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            pending = conn.pending
            transport = conn.transport
            if conn.proto.state is State.OPEN and not transport.is_closing():
                try:
                    transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
                except (OSError, RuntimeError):
                    transport.abort()
            pending.clear()


class WsgateHub(Hub):
    """wsgate's own node and server: the real backend publish path (``node.publish``)."""

    pack = True

    def __init__(self) -> None:
        super().__init__()
        from wsgate import Node  # noqa: PLC0415 - only the wsgate candidates need it
        from wsgate.config import load_config, replace  # noqa: PLC0415

        config = replace(
            load_config(env={}),
            anonymous=True,
            port=0,
            pack_messages=self.pack,
            max_connections=100_000,
        )
        self.node = Node(config)

    def count(self) -> int:
        return len(self.node.hub.subscribers("bench"))

    async def listen(self) -> int:
        from wsgate import Server  # noqa: PLC0415

        self.server = Server(self.node)
        await self.server.start()
        self.transport_kind = "wsgate"
        asyncio.get_running_loop().call_later(0.2, self._poll)
        return self.server.port

    def _poll(self) -> None:
        self.check()
        asyncio.get_running_loop().call_later(0.2, self._poll)

    def publish(self, payload: bytes) -> Coroutine[Any, Any, None]:  # type: ignore[override]
        return self.node.publish("bench", payload.decode())


class WsgateUnpackedHub(WsgateHub):
    pack = False


HUBS: dict[str, Callable[[], Hub]] = {
    "websockets": WebsocketsHub,
    "picows-send": PicowsSendHub,
    "picows-coalesced": PicowsCoalescedHub,
    "picows-packed": PicowsPackedHub,
    "sansio-coalesced": SansIOHub,
    "wsgate": WsgateHub,
    "wsgate-unpacked": WsgateUnpackedHub,
}


async def publish_loop(hub: Hub, messages: int, size: int, burst: int) -> tuple[int, int]:
    pad = b"x" * (size - TS_DIGITS)
    clock = time.monotonic_ns
    t0 = clock()
    for i in range(1, messages + 1):
        pending = hub.publish(b"%019d" % clock() + pad)
        if pending is not None:  # wsgate: an awaitable node.publish()
            await pending
        if i % burst == 0:
            await asyncio.sleep(0)
    t1 = clock()
    await asyncio.sleep(0)  # let a pending coalesced flush run
    return t0, t1


async def server_main(args: argparse.Namespace) -> None:
    signal.alarm(args.lifetime)
    nofile = raise_nofile()
    hub = HUBS[args.impl]()
    if isinstance(hub, PicowsHub):
        hub.use_aiofastnet = args.picows_transport == "aiofastnet"
    port = await hub.listen()
    emit("listening", port=port, nofile=nofile)
    reader = await stdin_reader()
    async for raw in reader:
        cmd = raw.decode().split()
        if not cmd:
            continue
        if cmd[0] == "wait":
            hub.expect(int(cmd[1]))
            try:
                await asyncio.wait_for(hub.reached.wait(), timeout=float(cmd[2]))
            except TimeoutError:
                emit("error", message=f"only {hub.count()} of {cmd[1]} subscribers")
                continue
            emit("ready", subscribers=hub.count())
        elif cmd[0] == "gc":
            gc.collect()
            emit("gc")
        elif cmd[0] == "publish":
            messages, size, burst = int(cmd[1]), int(cmd[2]), int(cmd[3])
            t0, t1 = await publish_loop(hub, messages, size, burst)
            emit(
                "published",
                t0=t0,
                t1=t1,
                pauses=hub.pauses,
                subscribers=hub.count(),
                transport=hub.transport_kind,
            )
        elif cmd[0] == "quit":
            break


# --------------------------------------------------------------------------- client


class ClientStats:
    def __init__(self, expected: int, packed: bool, wsgate: bool = False) -> None:
        self.expected = expected
        self.packed = packed
        self.wsgate = wsgate
        self.latencies = array("q")  # ns, one per received message
        self.frames = 0
        self.last_ns = 0
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class SubscriberListener(WSListener):
    def __init__(self, stats: ClientStats) -> None:
        super().__init__()
        self.stats = stats

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            now = time.monotonic_ns()
            stats = self.stats
            latencies = stats.latencies
            payload = frame.get_payload_as_bytes()
            if stats.wsgate:
                decoded = msgspec.json.decode(payload)
                for item in decoded if isinstance(decoded, list) else (decoded,):
                    if item.get("op") == "msg":
                        latencies.append(now - int(item["data"][:TS_DIGITS]))
            elif stats.packed:
                for part in payload.split(b"\n"):
                    latencies.append(now - int(part[:TS_DIGITS]))
            else:
                latencies.append(now - int(payload[:TS_DIGITS]))
            stats.frames += 1
            stats.last_ns = now
            if len(latencies) >= stats.expected and not stats.complete.done():
                stats.complete.set_result(None)
        elif frame.msg_type == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def open_connections(
    url: str, count: int, stats: ClientStats
) -> tuple[list[WSTransport], int, str]:
    factory = functools.partial(SubscriberListener, stats)
    transports: list[WSTransport] = []
    errors, first_error = 0, ""
    for start in range(0, count, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, count - start)
        results = await asyncio.gather(
            *(
                ws_connect(
                    factory,
                    url,
                    read_buffer_init_size=READ_BUFFER_INIT_SIZE,
                    max_frame_size=MAX_FRAME,
                    websocket_handshake_timeout=30,
                )
                for _ in range(batch)
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                errors += 1
                first_error = first_error or repr(result)
            else:
                transports.append(result[0])
    return transports, errors, first_error


async def wait_drained(stats: ClientStats, idle_timeout: float, max_wait: float) -> None:
    """Until everything arrived, or nothing arrived for idle_timeout s, or max_wait s."""
    armed_ns = time.monotonic_ns()
    deadline_ns = armed_ns + int(max_wait * 1e9)
    idle_ns = int(idle_timeout * 1e9)
    while not stats.complete.done():
        await asyncio.wait([stats.complete], timeout=0.05)
        now = time.monotonic_ns()
        if now - max(stats.last_ns, armed_ns) > idle_ns or now > deadline_ns:
            return


def percentile_us(ordered: Sequence[int], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


async def close_all(transports: list[WSTransport], wait_s: float) -> int:
    """Send CLOSE on every connection; count those the server answered with CLOSE."""
    for transport in transports:
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(t.wait_disconnected() for t in transports)), timeout=wait_s
        )
    return sum(
        1
        for t in transports
        if t.close_handshake is not None and t.close_handshake.recv is not None
    )


async def client_main(args: argparse.Namespace) -> None:
    signal.alarm(args.lifetime)
    nofile = raise_nofile()
    stats = ClientStats(args.subscribers * args.messages, args.packed, args.wsgate)
    path = "/ws" if args.wsgate else "/"
    transports, errors, first_error = await open_connections(
        f"ws://{HOST}:{args.port}{path}", args.subscribers, stats
    )
    if args.wsgate:
        for transport in transports:
            transport.send(WSMsgType.TEXT, b'{"op":"sub","id":1,"topic":"bench"}')
    emit("connected", n=len(transports), errors=errors, first_error=first_error, nofile=nofile)
    reader = await stdin_reader()
    async for raw in reader:
        cmd = raw.decode().split()
        if not cmd:
            continue
        if cmd[0] == "arm":
            await wait_drained(stats, args.idle_timeout, args.max_wait)
            received = len(stats.latencies)
            emit("drained", received=received, frames=stats.frames, last_ns=stats.last_ns)
            ordered = sorted(stats.latencies)
            emit(
                "latency",
                p50_us=percentile_us(ordered, 0.50),
                p99_us=percentile_us(ordered, 0.99),
                max_us=ordered[-1] / 1000 if ordered else float("nan"),
            )
        elif cmd[0] == "close":
            clean = await close_all(transports, wait_s=5.0)
            emit("closed", clean=clean, total=len(transports))
        elif cmd[0] == "quit":
            break


# --------------------------------------------------------------------------- orchestrator


@dataclass
class Child:
    """A pinned child process of this script, speaking JSON lines."""

    name: str
    proc: asyncio.subprocess.Process
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def expect(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"{self.name} exited: {self.stderr_tail()}")
            try:
                message = json.loads(raw)
            except ValueError:
                continue  # stray output
            if message.get("event") == "error":
                raise RuntimeError(f"{self.name}: {message.get('message')}")
            if message.get("event") == event:
                return cast(dict[str, Any], message)

    def stderr_lines(self) -> int:
        with self.stderr_path.open(errors="replace") as f:
            return sum(1 for _ in f)

    def stderr_tail(self, lines: int = 5) -> str:
        text = self.stderr_path.read_text(errors="replace").splitlines()
        return " | ".join(text[-lines:])

    async def stop(self) -> None:
        """Ask nicely, then SIGTERM, then SIGKILL; always by this child's own PID."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send("quit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), timeout=2.0)
                    return
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
            await self.proc.wait()


async def spawn(name: str, cpu: str, logdir: Path, argv: list[str]) -> Child:
    stderr_path = logdir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            "taskset",
            "-c",
            cpu,
            sys.executable,
            SCRIPT,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=1 << 20,
        )
    return Child(name, proc, stderr_path)


@dataclass
class CoreUsage:
    """What one CPU did during the fan-out window (from /proc/stat, in seconds)."""

    busy_s: float  # user + nice + system + irq + softirq
    task_s: float  # user + nice + system: time charged to processes
    softirq_s: float  # irq + softirq + ksoftirqd/N: loopback TCP receive processing
    steal_s: float
    total_s: float

    @property
    def busy_pct(self) -> float:
        return 100 * self.busy_s / self.total_s if self.total_s else float("nan")


def ksoftirqd_pids() -> dict[str, int]:
    """PIDs of the per-CPU softirq threads: softirq work deferred to them is ours too."""
    pids: dict[str, int] = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            name = comm.read_text().strip()
            if name.startswith("ksoftirqd/"):
                pids[name.removeprefix("ksoftirqd/")] = int(comm.parent.name)
    return pids


def read_cpu_jiffies() -> dict[str, list[int]]:
    """Per-CPU [user, nice, system, idle, iowait, irq, softirq, steal] from /proc/stat."""
    cpus: dict[str, list[int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            cpus[name] = [int(v) for v in values[:8]]
    return cpus


def core_usage(
    before: dict[str, list[int]], after: dict[str, list[int]], cpu: str, ksoftirqd_s: float
) -> CoreUsage:
    user, nice, system, idle, iowait, irq, softirq, steal = (
        (a - b) / CLK_TCK for a, b in zip(after[f"cpu{cpu}"], before[f"cpu{cpu}"], strict=True)
    )
    task = user + nice + system
    return CoreUsage(
        busy_s=task + irq + softirq,
        task_s=task,
        softirq_s=irq + softirq + ksoftirqd_s,
        steal_s=steal,
        total_s=task + idle + iowait + irq + softirq + steal,
    )


@dataclass
class RunResult:
    received: int
    expected: int
    frames: int
    wall_s: float  # first publish -> last delivery
    publish_loop_s: float
    server_user_s: float
    server_sys_s: float
    client_cpu_s: float
    server_core: CoreUsage
    client_core: CoreUsage
    other_s: float  # CPU that other processes took on the two cores during the window
    p50_us: float
    p99_us: float
    max_us: float
    pauses: int
    clean_closes: int
    stderr_lines: int
    attempt: int
    transport: str

    @property
    def deliveries_per_s(self) -> float:
        return self.received / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def server_cpu_s(self) -> float:
        return self.server_user_s + self.server_sys_s

    @property
    def server_cost_s(self) -> float:
        """Server process CPU plus the softirq time on its core (loopback TCP work)."""
        return self.server_cpu_s + self.server_core.softirq_s

    @property
    def noisy(self) -> bool:
        return self.other_s > NOISE_FRACTION * self.wall_s

    def summary(self) -> str:
        return (
            f"{self.deliveries_per_s:,.0f} deliveries/s, lost {self.lost}, "
            f"p50 {self.p50_us / 1000:.1f} ms, p99 {self.p99_us / 1000:.1f} ms, wall "
            f"{self.wall_s:.2f} s (publish loop {self.publish_loop_s:.2f} s); server "
            f"{self.server_user_s:.2f}u+{self.server_sys_s:.2f}s, core{SERVER_CPU} softirq "
            f"{self.server_core.softirq_s:.2f} s, busy {self.server_core.busy_pct:.0f}%; client "
            f"{self.client_cpu_s:.2f} s, core{CLIENT_CPU} busy {self.client_core.busy_pct:.0f}%; "
            f"others {self.other_s:.2f} s; frames/msg {self.frames / max(1, self.received):.3f}; "
            f"pauses {self.pauses}; clean closes {self.clean_closes}; "
            f"stderr lines {self.stderr_lines}; {self.transport}"
            + ("; NOISY" if self.noisy else "")
        )


@dataclass
class CandidateResult:
    name: str
    runs: list[RunResult] = field(default_factory=list)
    discarded: list[RunResult] = field(default_factory=list)  # noisy runs that were retried
    failures: list[str] = field(default_factory=list)
    rss_per_conn_kib: float | None = None


def server_argv(impl: str, args: argparse.Namespace) -> list[str]:
    argv = ["server", "--impl", impl, "--lifetime", str(CHILD_LIFETIME_S)]
    return [*argv, "--picows-transport", args.picows_transport]


def client_argv(port: int, subscribers: int, messages: int, args: argparse.Namespace) -> list[str]:
    argv = ["client", "--port", str(port), "--subscribers", str(subscribers)]
    argv += ["--messages", str(messages), "--lifetime", str(CHILD_LIFETIME_S)]
    argv += ["--idle-timeout", str(args.idle_timeout), "--max-wait", str(args.max_wait)]
    return argv


async def fanout_run(impl: str, args: argparse.Namespace, logdir: Path, attempt: int) -> RunResult:
    n, m = args.subscribers, args.messages
    children: list[Child] = []
    published_task: asyncio.Task[dict[str, Any]] | None = None
    try:
        server = await spawn(f"{impl}-server", SERVER_CPU, logdir, server_argv(impl, args))
        children.append(server)
        port = (await server.expect("listening"))["port"]
        argv = client_argv(port, n, m, args) + (["--packed"] if impl in PACKED else [])
        argv += ["--wsgate"] if impl in WSGATE else []
        client = await spawn(f"{impl}-client", CLIENT_CPU, logdir, argv)
        children.append(client)
        connected = await client.expect("connected")
        if connected["n"] != n:
            raise RuntimeError(f"client connected {connected['n']}/{n}: {connected['first_error']}")
        server.send(f"wait {n} 30")
        await server.expect("ready")
        await asyncio.sleep(0.5)  # let handshake stragglers and GC settle
        softirqd = ksoftirqd_pids()
        server0, client0 = proc_cpu(server.pid), proc_cpu(client.pid)
        cores0, self0 = read_cpu_jiffies(), time.process_time()
        softirqd0 = {cpu: sum(proc_cpu(pid)) for cpu, pid in softirqd.items()}
        client.send("arm")
        server.send(f"publish {m} {args.size} {args.burst}")
        published_task = asyncio.create_task(server.expect("published"))
        drained = await client.expect("drained")
        server1, client1 = proc_cpu(server.pid), proc_cpu(client.pid)
        cores1, self1 = read_cpu_jiffies(), time.process_time()
        softirqd_s = {cpu: sum(proc_cpu(pid)) - softirqd0[cpu] for cpu, pid in softirqd.items()}
        published = await published_task
        latency = await client.expect("latency")
        client.send("close")
        closed = await client.expect("closed")
        server_core = core_usage(cores0, cores1, SERVER_CPU, softirqd_s.get(SERVER_CPU, 0.0))
        client_core = core_usage(cores0, cores1, CLIENT_CPU, softirqd_s.get(CLIENT_CPU, 0.0))
        ours = sum(server1) - sum(server0) + sum(client1) - sum(client0) + self1 - self0
        ours += sum(softirqd_s.values())
        return RunResult(
            received=drained["received"],
            expected=n * m,
            frames=drained["frames"],
            wall_s=max(0, drained["last_ns"] - published["t0"]) / 1e9,
            publish_loop_s=(published["t1"] - published["t0"]) / 1e9,
            server_user_s=server1[0] - server0[0],
            server_sys_s=server1[1] - server0[1],
            client_cpu_s=sum(client1) - sum(client0),
            server_core=server_core,
            client_core=client_core,
            other_s=max(0.0, server_core.task_s + client_core.task_s - ours),
            p50_us=latency["p50_us"],
            p99_us=latency["p99_us"],
            max_us=latency["max_us"],
            pauses=published["pauses"],
            clean_closes=closed["clean"],
            stderr_lines=sum(child.stderr_lines() for child in children),
            attempt=attempt,
            transport=published["transport"],
        )
    finally:
        if published_task is not None:
            published_task.cancel()
        await asyncio.gather(*(child.stop() for child in children))


async def wait_for_quiet(max_wait_s: float) -> float:
    """Wait (bounded) until both cores are idle for 0.5 s: others share this machine."""
    started = time.monotonic()
    while True:
        before = read_cpu_jiffies()
        await asyncio.sleep(0.5)
        after = read_cpu_jiffies()
        busy = sum(core_usage(before, after, cpu, 0.0).busy_s for cpu in (SERVER_CPU, CLIENT_CPU))
        waited = time.monotonic() - started
        if busy <= 0.1 or waited >= max_wait_s:  # <= 10% of a core over the 0.5 s sample
            return waited


async def memory_run(impl: str, connections: int, args: argparse.Namespace, logdir: Path) -> float:
    children: list[Child] = []
    try:
        server = await spawn(f"{impl}-memserver", SERVER_CPU, logdir, server_argv(impl, args))
        children.append(server)
        port = (await server.expect("listening"))["port"]
        server.send("gc")
        await server.expect("gc")
        await asyncio.sleep(0.5)
        before = proc_rss_kib(server.pid)
        client = await spawn(
            f"{impl}-memclient",
            CLIENT_CPU,
            logdir,
            client_argv(port, connections, 0, args) + (["--wsgate"] if impl in WSGATE else []),
        )
        children.append(client)
        connected = await client.expect("connected")
        if connected["n"] != connections:
            error = connected["first_error"]
            raise RuntimeError(f"connected {connected['n']}/{connections}: {error}")
        server.send(f"wait {connections} 30")
        await server.expect("ready")
        server.send("gc")
        await server.expect("gc")
        await asyncio.sleep(1.0)
        return (proc_rss_kib(server.pid) - before) / connections
    finally:
        await asyncio.gather(*(child.stop() for child in children))


async def bounded(coro: Coroutine[Any, Any, T], what: str, result: CandidateResult) -> T | None:
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            return await coro
    except (TimeoutError, RuntimeError, OSError) as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        result.failures.append(message)
        print(f"  FAILED {message}", flush=True)
        return None


async def measure_candidate(impl: str, args: argparse.Namespace, logdir: Path) -> CandidateResult:
    result = CandidateResult(impl)
    print(f"== {impl}: {CANDIDATES[impl]}", flush=True)
    for run in range(1, args.runs + 1):
        for attempt in range(1, args.noise_retries + 2):
            await wait_for_quiet(args.quiet_wait)
            outcome = await bounded(
                fanout_run(impl, args, logdir, attempt), f"run {run}.{attempt}", result
            )
            if outcome is None:
                break
            print(f"  run {run}.{attempt}: {outcome.summary()}", flush=True)
            if not outcome.noisy or attempt > args.noise_retries:
                result.runs.append(outcome)
                break
            result.discarded.append(outcome)  # another process took CPU: measure again
    if args.memory_connections and impl in MEMORY_CANDIDATES:
        result.rss_per_conn_kib = await bounded(
            memory_run(impl, args.memory_connections, args, logdir), "memory", result
        )
        if result.rss_per_conn_kib is not None:
            print(f"  RSS per idle connection: {result.rss_per_conn_kib:.2f} KiB", flush=True)
    return result


async def orchestrate(args: argparse.Namespace) -> list[CandidateResult]:
    logdir = Path(tempfile.mkdtemp(prefix="wsgate-fanout-"))
    print(f"child stderr logs: {logdir}", flush=True)
    results = [await measure_candidate(impl, args, logdir) for impl in args.only]
    picows = next((r for r in results if r.name == "picows-send"), None)
    for result in results:  # the picows-* candidates share one per-connection footprint
        if picows is not None and result.name.startswith("picows-"):
            result.rss_per_conn_kib = result.rss_per_conn_kib or picows.rss_per_conn_kib
    if not args.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def limit_of(result: CandidateResult) -> str:
    """What limited the fan-out, from core saturation and from how far the client lagged.

    The server never waits for the client (nothing here fills a socket buffer), so a
    saturated client core with last delivery well after the publish loop ended means the
    client was the limit; a saturated server core with the client keeping up means the
    server was.
    """
    if not result.runs:
        return "-"
    server = median([r.server_core.busy_pct for r in result.runs])
    client = median([r.client_core.busy_pct for r in result.runs])
    lag = median([(r.wall_s - r.publish_loop_s) / r.wall_s for r in result.runs])
    busy = 100 * BUSY_FRACTION
    if client >= busy and lag > 0.03:
        return f"client (lags {100 * lag:.0f}%)"
    if server >= busy:
        return "server" + (f" (client {client:.0f}%)" if client >= busy else "")
    return "neither"


def spread_of(result: CandidateResult) -> str:
    rates = [r.deliveries_per_s / 1000 for r in result.runs]
    return f"{min(rates):.0f}k-{max(rates):.0f}k" if rates else "-"


def render_table(results: list[CandidateResult]) -> str:
    rows: list[tuple[str, Callable[[CandidateResult], str]]] = []

    def metric(label: str, get: Callable[[RunResult], float], fmt: str) -> None:
        def cell(c: CandidateResult) -> str:
            return format(median([get(r) for r in c.runs]), fmt) if c.runs else "-"

        rows.append((label, cell))

    metric("deliveries/s", lambda r: r.deliveries_per_s, ",.0f")
    rows.append(("deliveries/s min-max", spread_of))
    metric("fan-out wall s", lambda r: r.wall_s, ".2f")
    metric("publish loop s", lambda r: r.publish_loop_s, ".2f")
    metric("lost messages", lambda r: r.lost, ".0f")
    metric("latency p50 ms", lambda r: r.p50_us / 1000, ".1f")
    metric("latency p99 ms", lambda r: r.p99_us / 1000, ".1f")
    metric("server CPU s (user)", lambda r: r.server_user_s, ".2f")
    metric("server CPU s (sys)", lambda r: r.server_sys_s, ".2f")
    metric(f"core {SERVER_CPU} softirq s", lambda r: r.server_core.softirq_s, ".2f")
    metric(f"core {SERVER_CPU} busy %", lambda r: r.server_core.busy_pct, ".0f")
    metric("server µs CPU/delivery", lambda r: 1e6 * r.server_cost_s / r.received, ".2f")
    metric("client CPU s", lambda r: r.client_cpu_s, ".2f")
    metric(f"core {CLIENT_CPU} busy %", lambda r: r.client_core.busy_pct, ".0f")
    metric("other processes CPU s", lambda r: r.other_s, ".2f")
    metric("frames/message", lambda r: r.frames / max(1, r.received), ".3f")
    metric("pause_writing calls", lambda r: r.pauses, ".0f")
    metric("clean closes", lambda r: r.clean_closes, ".0f")
    rows.append(("limited by", limit_of))
    rows.append(
        (
            "RSS/idle conn KiB",
            lambda c: "-" if c.rss_per_conn_kib is None else f"{c.rss_per_conn_kib:.1f}",
        )
    )
    rows.append(
        (
            "runs: ok (noisy kept)/redone/failed",
            lambda c: (
                f"{len(c.runs)} ({sum(r.noisy for r in c.runs)})/{len(c.discarded)}"
                f"/{len(c.failures)}"
            ),
        )
    )
    header = ["metric (median)", *[c.name for c in results]]
    body = [[label, *[get(c) for c in results]] for label, get in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt_row(cells: list[str]) -> str:
        padded = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt_row(header), separator, *(fmt_row(b) for b in body)])


def load_results(path: Path) -> list[CandidateResult]:
    """Candidates back from a file written by --json."""

    def run_of(raw: dict[str, Any]) -> RunResult:
        fields = {k: v for k, v in raw.items() if k != "deliveries_per_s"}
        for core in ("server_core", "client_core"):
            fields[core] = CoreUsage(**fields[core])
        return RunResult(**fields)

    saved = json.loads(path.read_text())["results"]
    return [
        CandidateResult(
            name,
            runs=[run_of(run) for run in raw["runs"]],
            discarded=[run_of(run) for run in raw["discarded_noisy_runs"]],
            failures=raw["failures"],
            rss_per_conn_kib=raw["rss_per_conn_kib"],
        )
        for name, raw in saved.items()
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes (>= 20)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=1, help="messages published between yields")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--memory-connections", type=int, default=5000, help="0 to skip")
    parser.add_argument(
        "--picows-transport",
        choices=("aiofastnet", "uvloop"),
        default="aiofastnet",
        help="transports under the picows servers (picows' default is aiofastnet's)",
    )
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="s without progress = lost")
    parser.add_argument("--max-wait", type=float, default=45.0, help="s to wait for delivery")
    parser.add_argument(
        "--noise-retries",
        type=int,
        default=3,
        help=f"redo a run this often while other processes use > {NOISE_FRACTION:.0%} of a core",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="s to wait for an idle machine per run"
    )
    parser.add_argument("--json", type=Path, help="also write raw per-run results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep children's stderr logs")
    parser.add_argument("--render", type=Path, help="only print the table of a --json file")
    sub = parser.add_subparsers(dest="role")
    server = sub.add_parser("server", help="(internal) run one candidate server")
    server.add_argument("--impl", choices=sorted(CANDIDATES), required=True)
    server.add_argument("--lifetime", type=int, default=CHILD_LIFETIME_S)
    server.add_argument("--picows-transport", choices=("aiofastnet", "uvloop"), required=True)
    client = sub.add_parser("client", help="(internal) run the load generator")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--subscribers", type=int, required=True)
    client.add_argument("--messages", type=int, required=True)
    client.add_argument("--packed", action="store_true")
    client.add_argument("--wsgate", action="store_true", help="JSON msg frames, subscribe first")
    client.add_argument("--lifetime", type=int, default=CHILD_LIFETIME_S)
    client.add_argument("--idle-timeout", type=float, required=True)
    client.add_argument("--max-wait", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role is None and args.size < TS_DIGITS + 1:
        parser.error(f"--size must be at least {TS_DIGITS + 1}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role in ("server", "client"):
        child_main = server_main if args.role == "server" else client_main
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(child_main(args))
        return
    if args.render is not None:
        print(render_table(load_results(args.render)))
        return
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is required")
    print(
        f"fan-out: {args.subscribers} subscribers x {args.messages} messages x {args.size} B, "
        f"burst {args.burst}, {args.runs} runs, picows on {args.picows_transport} transports; "
        f"server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}; python {sys.version.split()[0]}",
        flush=True,
    )
    results = asyncio.run(orchestrate(args))
    print()
    print(render_table(results))
    for result in results:
        for failure in result.failures:
            print(f"{result.name}: {failure}")
    if args.json is not None:
        raw = {
            r.name: {
                "runs": [
                    asdict(run) | {"deliveries_per_s": run.deliveries_per_s} for run in r.runs
                ],
                "discarded_noisy_runs": [asdict(run) for run in r.discarded],
                "failures": r.failures,
                "rss_per_conn_kib": r.rss_per_conn_kib,
            }
            for r in results
        }
        settings = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "results": raw}, indent=2) + "\n")


if __name__ == "__main__":
    main()
