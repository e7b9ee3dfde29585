"""Benchmark peer: python-socketio 5 (ASGI) on uvicorn, optionally clustered through Redis.

Started as ``python bench/servers/socketio_app.py --port P [--redis URL] [--node 0|1]``.
It prints one ``{"ready": true}`` line on stdout once uvicorn listens, then answers one
JSON command per stdin line (``publish``, ``requests``, ``rss``, ``quit``) with one JSON
line on stdout. Logs go to stderr.

Wire (engine.io 4 over a raw WebSocket, no polling):
``ws://127.0.0.1:P/socket.io/?EIO=4&transport=websocket``. A client sends ``40`` (a W3
device sends ``40{"dev":"dev-17"}``), subscribes with ``420["sub","bench.t"]`` and gets
the ack ``430[true]``; publications arrive as ``42["m","<payload>"]``. A request arrives
as ``42<id>["req","<payload>"]`` and the device answers ``43<id>["<payload>"]``.

Settings, chosen as an experienced user would for a benchmark:

- ``logger``/``engineio_logger``: the libraries' own ``socketio.server`` and
  ``engineio.server`` loggers, passed as objects so the libraries add no handler of their
  own (no duplicate lines) and log through the process's stderr handler at WARNING: no
  per-packet logging, the per-packet ``logger.info`` calls are level checks.
- ``transports=["websocket"]``: no long-polling transport or upgrade dance; clients open
  the WebSocket directly, which is how a benchmark client and most production clients
  that know their network connect.
- ``cors_allowed_origins="*"``: a load generator that sends an ``Origin`` header is not
  refused by the same-origin check; nothing else changes.
- ``http_compression=False``: irrelevant on WebSocket, turned off so no polling response
  is ever compressed either.
- ``ping_interval``/``ping_timeout`` left at the defaults (25 s / 20 s): the clients
  answer engine.io pings (``2`` -> ``3``), as a real client would.
- ``async_handlers`` left on (the default): each event handler runs in its own task, so a
  slow ``sub`` cannot hold up the reader of a connection.
- AsyncRedisManager (``--redis URL``): the standard way to run several python-socketio
  nodes. ``emit`` delivers to this node's room members directly and publishes one
  message on the ``socketio`` Redis channel; the other nodes deliver it to theirs.
  ``redis_options={"max_connections": 10_000}`` (see ``REDIS_POOL``): redis-py 8's default
  pool of 100 connections overflows with 100 concurrent ``call``s.
- uvicorn in the same process (``common.serve_asgi``): ``loop="uvloop"``, ``ws="websockets"``,
  ``access_log=False``, ``log_level="warning"``, ``lifespan="off"`` (no startup hooks),
  ``ws_per_message_deflate=False`` (no per-frame compression: the payloads are small and
  compressing each copy of a fan-out costs CPU the benchmark would measure as the peer's),
  ``ws_ping_interval=None`` (engine.io already runs a heartbeat; a second WebSocket-level
  ping would only add frames), ``backlog=4096`` (1,000+ clients connecting at once).

Nothing is dropped by python-socketio itself: every engine.io socket has an unbounded
send queue, so a slow reader makes the server's memory grow instead of losing messages.
Across nodes, Redis pub/sub is at most once: a node whose subscriber connection falls
behind Redis's ``client-output-buffer-limit pubsub`` (32 MB hard, 8 MB for 60 s by
default) is disconnected by Redis and loses what was in flight.

Payloads: ``"%019d" % time.monotonic_ns()`` taken just before each message is published,
padded with ``x`` to the requested size (never shorter than the 19 digits).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import socketio
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import publish_loop, requests_loop, serve_asgi

log = logging.getLogger("socketio_app")

# redis-py 8 caps a client's connection pool at 100 connections. Every concurrent emit
# publishes on its own pooled connection, so 100 ``requests`` in flight plus the listener
# overflow it: the manager logs "Cannot publish to redis... retrying" and reconnects, which
# replaces its pub/sub connection. A pool this large never overflows in the benchmark.
REDIS_POOL = 10_000

# uvicorn 0.3x+ warns that ws="websockets" (the legacy websockets protocol) will later mean
# the sans-I/O one; the legacy implementation is the one asked for, keep stderr quiet.
warnings.filterwarnings("ignore", message=".*websockets.* implementation is deprecated")


class Peer:
    """The Socket.IO server and the commands the orchestrator drives it with."""

    def __init__(self, redis_url: str | None) -> None:
        manager = (
            socketio.AsyncRedisManager(redis_url, redis_options={"max_connections": REDIS_POOL})
            if redis_url
            else None
        )
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            client_manager=manager,
            logger=logging.getLogger("socketio.server"),
            engineio_logger=logging.getLogger("engineio.server"),
            transports=["websocket"],
            cors_allowed_origins="*",
            http_compression=False,
        )
        self.app = socketio.ASGIApp(self.sio)
        # W3: device id (from the CONNECT auth payload) -> Socket.IO sid.
        self.devices: dict[str, str] = {}
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("sub", self.on_sub)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        if isinstance(auth, dict) and isinstance(auth.get("dev"), str):
            self.devices[auth["dev"]] = sid
        return True

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        for dev, dev_sid in list(self.devices.items()):
            if dev_sid == sid:
                del self.devices[dev]

    async def on_sub(self, sid: str, topic: Any) -> bool:
        if not isinstance(topic, str):
            return False
        await self.sio.enter_room(sid, topic)
        return True

    async def publish(self, topic: str, count: int, size: int, rate: float) -> dict[str, Any]:
        emit = self.sio.emit

        def one(payload: str) -> Awaitable[Any]:
            return emit("m", payload, room=topic)

        return await publish_loop(one, count, size, rate)

    async def requests(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """W3 in-process: ``sio.call`` to the devices, which must echo the payload."""
        count = int(cmd["count"])
        sids = list(self.devices.values())[:count]
        if not sids:
            return {"error": "no devices connected"}
        if len(sids) < count:
            log.warning("requests: %d devices asked for, %d connected", count, len(sids))
        call = self.sio.call

        async def one(sid: str, payload: str) -> None:
            if await call("req", payload, to=sid, timeout=5) != payload:
                raise ValueError("the device did not echo the request")

        return await requests_loop(
            one,
            sids,
            max(1, int(cmd.get("inflight", 1))),
            float(cmd["seconds"]),
            int(cmd.get("size", 100)),
        )

    async def publish_command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return await self.publish(
            str(cmd["topic"]), int(cmd["count"]), int(cmd["size"]), float(cmd.get("rate", 0))
        )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default=None, help="redis:// URL: AsyncRedisManager")
    parser.add_argument("--node", type=int, default=0, help="node index (for the logs)")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"socketio[{args.node}] %(levelname)s %(name)s: %(message)s",
    )

    peer = Peer(args.redis)

    def start_listener() -> None:
        if args.redis:
            # Start the Redis listener now rather than on the first emit, so a node that
            # only receives (W2 subscribers on the second node) is subscribed before
            # publishing.
            peer.sio.manager_initialized = True
            peer.sio.manager.initialize()

    handlers = {"publish": peer.publish_command, "requests": peer.requests}
    return await serve_asgi(peer.app, args.port, handlers, start_listener)


if __name__ == "__main__":
    code = uvloop.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
