"""The load generator: ONE uvloop + picows client process speaking four wires.

Wires: ``wsgate`` (JSON frames, packed arrays), ``nats`` (the NATS text protocol over
WebSocket), ``socketio`` (engine.io 4 / socket.io 5 over WebSocket) and ``channels``
(Django Channels, plain text frames). Started by bench/run.py pinned to core 1; answers
one JSON command per stdin line with one JSON line on stdout:

* ``{"cmd":"open","wire":W,"urls":[...],"count":N,"mode":"sub"|"idle"|"device",
  "sources":K,"token":T}``: open N connections round-robin over ``urls`` (from K source
  addresses 127.0.0.2.. when K > 1) and wait until each is subscribed (``sub``), greeted
  (``idle``) or ready to answer requests (``device``, device i is ``dev-i``);
  answers ``{"open": n, "errors": e, "first_error": s, "seconds": t}``.
* ``{"cmd":"arm"}``: forget what arrived so far; answers ``{"armed": true}``.
* ``{"cmd":"drain","expected":X,"max_wait":S,"idle_timeout":I}``: wait until X messages
  arrived since ``arm``, or none for I s, or S s passed; answers counts, the last
  delivery's ``monotonic_ns`` and latency percentiles (payload timestamp -> receipt).
* ``{"cmd":"close"}``: close every connection. ``{"cmd":"quit"}``: exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    JWT_SECRET,
    TOPIC,
    TS_DIGITS,
    answer,
    percentile_us,
    raise_nofile,
    stdin_reader,
)

CONNECT_CONCURRENCY = 64
READ_BUFFER_INIT_SIZE = 2048
MAX_FRAME = 16 << 20
READY_TIMEOUT_S = 60.0
LIFETIME_S = 1800  # SIGALRM backstop: the process ends even if the orchestrator died
TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
json_decode = msgspec.json.decode


class Stats:
    """Deliveries since the last ``arm``: one latency (ns) per message."""

    def __init__(self) -> None:
        self.latencies = array("q")
        self.frames = 0
        self.last_ns = 0
        self.expected = 0
        self.complete: asyncio.Future[None] | None = None
        self.replies = 0

    def arm(self) -> None:
        self.latencies = array("q")
        self.frames = 0
        self.last_ns = 0

    def frame_done(self, now: int) -> None:
        self.frames += 1
        self.last_ns = now
        complete = self.complete
        if complete is not None and len(self.latencies) >= self.expected and not complete.done():
            complete.set_result(None)


STATS: Stats


class Client(WSListener):
    """One connection; subclasses speak one wire. ``ready`` resolves when it is usable."""

    transport: WSTransport

    def __init__(self, mode: str, index: int) -> None:
        super().__init__()
        self.mode = mode
        self.index = index
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.connected()

    def connected(self) -> None:
        pass

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(reason))

    def send_text(self, data: bytes) -> None:
        self.transport.send(TEXT, data)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is TEXT or kind is BINARY:
            self.received(frame.get_payload_as_bytes())
        elif kind is CLOSE:
            self.fail(f"closed {frame.get_close_code()} {frame.get_close_message()!r}")
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.fail("disconnected")

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_writing(self) -> None:  # picows warns on every watermark crossing otherwise
        pass

    def resume_writing(self) -> None:
        pass


def deliver(now: int, payload: bytes | str) -> None:
    STATS.latencies.append(now - int(payload[:TS_DIGITS]))


class Item(msgspec.Struct):
    """The fields of a wsgate server message the generator looks at (others ignored)."""

    op: str
    id: int | None = None
    data: Any = None


# Typed decoding into a Struct skips building a dict per message (about half the cost).
wsgate_decode = msgspec.json.Decoder(list[Item] | Item).decode
encode_json = msgspec.json.encode


class WsgateClient(Client):
    """JSON frames; a frame is one message object or an array of them (packing)."""

    def received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        decoded = wsgate_decode(data)
        items = decoded if isinstance(decoded, list) else (decoded,)
        got = False
        latencies = STATS.latencies
        for item in items:
            op = item.op
            if op == "msg":
                latencies.append(now - int(item.data[:TS_DIGITS]))
                got = True
            elif op == "req":
                reply = {"op": "reply", "id": item.id, "data": item.data}
                self.send_text(encode_json(reply))
                STATS.replies += 1
            elif op == "welcome":
                if self.mode == "sub":
                    self.send_text(b'{"op":"sub","id":1,"topic":"' + TOPIC.encode() + b'"}')
                else:
                    self.set_ready()
            elif op == "ok" and item.id == 1:
                self.set_ready()
            elif op == "error":
                self.fail(f"error {item}")
        if got:
            STATS.frame_done(now)


class NatsClient(Client):
    """NATS text protocol over WebSocket; a MSG may span frames, a frame may hold many."""

    def __init__(self, mode: str, index: int) -> None:
        super().__init__(mode, index)
        self.buffer = b""

    def send_binary(self, data: bytes) -> None:
        self.transport.send(BINARY, data)

    def received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buffer + data if self.buffer else data
        pos, end, got = 0, len(buf), False
        while pos < end:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf.startswith(b"MSG ", pos):
                last_space = buf.rfind(b" ", pos, eol)
                size = int(buf[last_space + 1 : eol])
                start = eol + 2
                if start + size + 2 > end:
                    break  # the payload is in a later frame
                if buf.count(b" ", pos, eol) == 4:  # MSG subject sid reply size: a request
                    payload = buf[start : start + size]
                    reply = buf[pos + 4 : eol].split(b" ")[2]
                    self.send_binary(b"PUB %s %d\r\n%s\r\n" % (reply, len(payload), payload))
                    STATS.replies += 1
                else:
                    STATS.latencies.append(now - int(buf[start : start + TS_DIGITS]))
                    got = True
                pos = start + size + 2
                continue
            line = buf[pos:eol]
            pos = eol + 2
            if line.startswith(b"INFO"):
                self.greeted()
            elif line == b"PING":
                self.send_binary(b"PONG\r\n")
            elif line == b"PONG":
                self.set_ready()
            elif line.startswith(b"-ERR"):
                self.fail(line.decode(errors="replace"))
        self.buffer = buf[pos:] if pos < end else b""
        if got:
            STATS.frame_done(now)

    def greeted(self) -> None:
        hello = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
        if self.mode == "sub":
            hello += b"SUB " + TOPIC.encode() + b" 1\r\n"
        elif self.mode == "device":
            hello += b"SUB dev.%d 1\r\n" % self.index
        self.send_binary(hello + b"PING\r\n")


MSG_PREFIX = b'42["m","'


class SocketioClient(Client):
    """engine.io 4 packets, one per frame; socket.io 5 events and acks in the default ns."""

    def received(self, data: bytes) -> None:
        if data.startswith(MSG_PREFIX):
            now = time.monotonic_ns()
            STATS.latencies.append(now - int(data[8 : 8 + TS_DIGITS]))
            STATS.frame_done(now)
        elif data == b"2":
            self.send_text(b"3")
        elif data.startswith(b"42"):  # 42<ack>["req","<payload>"]: answer 43<ack>[payload]
            bracket = data.index(b"[")
            ack = data[2:bracket]
            event = json.loads(data[bracket:])
            if ack and event[0] == "req":
                self.send_text(b"43" + ack + json.dumps(event[1:2]).encode())
                STATS.replies += 1
        elif data.startswith(b"0{"):  # engine.io open
            if self.mode == "device":
                self.send_text(b'40{"dev":"dev-%d"}' % self.index)
            else:
                self.send_text(b"40")
        elif data.startswith(b"40"):  # socket.io connect ack
            if self.mode == "sub":
                self.send_text(b'420["sub","' + TOPIC.encode() + b'"]')
            else:
                self.set_ready()
        elif data.startswith(b"430"):
            self.set_ready()
        elif data.startswith(b"44") or data.startswith(b"1"):
            self.fail(f"refused: {data[:200]!r}")


class ChannelsClient(Client):
    """Text frames: ``{"ok":true}`` acks the subscription; any other frame is a payload."""

    def connected(self) -> None:
        if self.mode == "sub":
            self.send_text(b'{"sub":"' + TOPIC.encode() + b'"}')
        else:
            self.set_ready()

    def received(self, data: bytes) -> None:
        if data.startswith(b"{"):
            if json.loads(data).get("ok"):
                self.set_ready()
            return
        now = time.monotonic_ns()
        STATS.latencies.append(now - int(data[:TS_DIGITS]))
        STATS.frame_done(now)


WIRES: dict[str, type[Client]] = {
    "wsgate": WsgateClient,
    "nats": NatsClient,
    "socketio": SocketioClient,
    "channels": ChannelsClient,
}


class Generator:
    def __init__(self) -> None:
        self.clients: list[Client] = []

    async def open_one(
        self, wire: str, url: str, mode: str, index: int, source: str | None
    ) -> Client:
        factory = functools.partial(WIRES[wire], mode, index)
        extra: dict[str, Any] = {}
        if source is not None:
            extra["local_addr"] = (source, 0)
        transport, client = await ws_connect(
            factory,
            url,
            read_buffer_init_size=READ_BUFFER_INIT_SIZE,
            max_frame_size=MAX_FRAME,
            websocket_handshake_timeout=READY_TIMEOUT_S,
            use_aiofastnet=False,
            **extra,
        )
        assert isinstance(client, Client)
        self.clients.append(client)
        try:
            await asyncio.wait_for(asyncio.shield(client.ready), READY_TIMEOUT_S)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        return client

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        wire, mode, count = command["wire"], command.get("mode", "sub"), command["count"]
        urls, sources = command["urls"], command.get("sources", 1)
        token = command.get("token")
        errors, first_error, opened = 0, "", 0
        # A window of CONNECT_CONCURRENCY handshakes in flight: below the listen backlog of
        # the servers (asyncio's default is 100), so no SYN is dropped and retried 1 s later.
        window = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(i: int) -> Client:
            async with window:
                return await self.open_one(
                    wire,
                    device_url(urls[i % len(urls)], wire, mode, i, token),
                    mode,
                    i,
                    f"127.0.0.{2 + i % sources}" if sources > 1 else None,
                )

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                errors += 1
                first_error = first_error or f"{type(result).__name__}: {result!r}"
            else:
                opened += 1
        return {
            "open": opened,
            "errors": errors,
            "first_error": first_error[:300],
            "seconds": time.monotonic() - started,
            "replies": STATS.replies,
        }

    async def drain(self, command: dict[str, Any]) -> dict[str, Any]:
        expected, max_wait = command["expected"], command["max_wait"]
        idle_ns = int(command.get("idle_timeout", 5.0) * 1e9)
        loop = asyncio.get_running_loop()
        STATS.expected = expected
        STATS.complete = complete = loop.create_future()
        if len(STATS.latencies) >= expected:
            complete.set_result(None)
        armed = time.monotonic_ns()
        deadline = armed + int(max_wait * 1e9)
        while not complete.done():
            await asyncio.wait([complete], timeout=0.05)
            now = time.monotonic_ns()
            if now - max(STATS.last_ns, armed) > idle_ns or now > deadline:
                break
        STATS.complete = None
        ordered = sorted(STATS.latencies)
        return {
            "received": len(ordered),
            "expected": expected,
            "frames": STATS.frames,
            "last_ns": STATS.last_ns,
            "complete": len(ordered) >= expected,
            "p50_us": percentile_us(ordered, 0.50),
            "p99_us": percentile_us(ordered, 0.99),
            "max_us": ordered[-1] / 1000 if ordered else float("nan"),
        }

    async def close(self) -> dict[str, Any]:
        clients, self.clients = self.clients, []
        live = [c.transport for c in clients if not c.transport.is_disconnected]
        for transport in live:
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(t.wait_disconnected() for t in live)), timeout=5.0
            )
        for transport in live:
            if not transport.is_disconnected:
                transport.disconnect(graceful=False)
        return {"closed": len(live)}


def device_url(url: str, wire: str, mode: str, index: int, token: str | None) -> str:
    """wsgate devices carry a token with ``cid`` dev-i; idle connections a shared token."""
    if wire != "wsgate":
        return url
    if mode == "device":
        import wsgate  # noqa: PLC0415 - only wsgate devices need it

        token = wsgate.mint_token(JWT_SECRET, user=f"dev-{index}", connection_id=f"dev-{index}")
    return f"{url}?token={token}" if token else url


async def main() -> None:
    global STATS  # noqa: PLW0603 - one process-wide counter the listeners share
    signal.alarm(LIFETIME_S)
    raise_nofile()
    STATS = Stats()
    generator = Generator()
    answer({"ready": True, "pid": os.getpid()})
    reader = await stdin_reader()
    async for raw in reader:
        if not raw.strip():
            continue
        command = json.loads(raw)
        name = command["cmd"]
        try:
            if name == "open":
                answer(await generator.open(command))
            elif name == "arm":
                STATS.arm()
                answer({"armed": True})
            elif name == "drain":
                answer(await generator.drain(command))
            elif name == "close":
                answer(await generator.close())
            elif name == "quit":
                break
            else:
                answer({"error": f"unknown command {name!r}"})
        except Exception as exc:
            answer({"error": f"{type(exc).__name__}: {exc}"})
    await generator.close()


if __name__ == "__main__":
    uvloop.run(main())
