"""Benchmark peer: Django Channels 4 on uvicorn, optionally clustered through Redis.

Started as ``python bench/servers/channels_app.py --port P [--redis URL] [--node 0|1]``.
It prints one ``{"ready": true}`` line on stdout once uvicorn listens, then answers one
JSON command per stdin line (``publish``, ``rss``, ``quit``; ``requests`` answers
``{"error": "unsupported"}``) with one JSON line on stdout. Logs go to stderr.

Wire: ``ws://127.0.0.1:P/ws/``; the client sends ``{"sub":"bench.t"}``, the consumer joins
the group and answers ``{"ok":true}``; each publication is one text frame holding exactly
the payload. ``publish`` calls ``channel_layer.group_send(group, {"type": "bench.msg",
"text": payload})`` once per message and the consumer's ``bench_msg`` sends the frame.
The group is the topic itself (``bench.t`` is a valid group name: letters, digits, ``-``,
``_`` and ``.``); other characters would become ``_`` (channels_site/consumers.py).

Django is configured in code (channels_site/settings.py): ``DEBUG=False``, no database, no
installed apps, ``django.setup()``; the ASGI app is a ``ProtocolTypeRouter`` with the
consumer at ``/ws/`` (channels_site/asgi.py).

Channel layer:

- without ``--redis``: ``channels.layers.InMemoryChannelLayer`` (single process).
- with ``--redis URL``: ``channels_redis.pubsub.RedisPubSubChannelLayer``, because it fans
  out faster. Measured against ``RedisChannelLayer`` on one redis-server, two nodes,
  subscribers split between them, 100-byte payloads published back to back on node 0,
  on a shared 2-core machine: 1,000 subscribers x 20 messages, 9,300-12,000 deliveries/s
  with pub/sub against 2,700-6,000/s with RedisChannelLayer; 600 x 30, 6,900-9,600/s
  against 2,400-4,500/s; at 200 x 100 the two were within noise (5,600-6,100/s against
  3,500-6,700/s). Pub/sub's ``group_send`` is one ``PUBLISH`` of the serialized message,
  and each node hands it to its local group members from one subscriber connection.
  RedisChannelLayer's ``group_send`` does a ``ZRANGE`` of the group, a pipeline of
  ``ZREMRANGEBYSCORE`` and a Lua script per message, and serializes into each message the
  names of all its recipient channels on that node (about 60 bytes per subscriber), which
  each node then pops with ``BZPOPMIN`` one message at a time, so its cost per message
  grows with the number of subscribers.
  ``--layer core`` selects RedisChannelLayer for comparison.

What the layers drop, and the limits raised (channels_site/settings.py):

- InMemoryChannelLayer and RedisChannelLayer have ``capacity`` (default 100 queued messages
  per channel; raised to 100,000) and ``expiry`` (default 60 s; raised to 3,600 s). With the
  defaults a group message to a full channel is skipped silently, and a message that waits
  longer than ``expiry`` is dropped (the in-memory layer also removes that channel from all
  its groups, so it gets nothing more). RedisChannelLayer's capacity applies to the one
  Redis key all consumers of a node share, and its receive buffer drops the oldest message
  once a consumer has ``capacity`` waiting.
- RedisPubSubChannelLayer has no capacity or expiry (an unbounded queue per consumer).
  Redis pub/sub is at most once: a subscriber connection over Redis's
  ``client-output-buffer-limit pubsub`` (32 MB hard, 8 MB for 60 s, by default) is closed
  by Redis and what was in flight is lost.

The consumer (channels_site/consumers.py, ``NoDatabaseBenchConsumer``) overrides
``dispatch`` to skip ``close_old_connections``: Channels 4.3 runs it through
``sync_to_async`` before every handler call, one worker-thread round trip per delivered
message, to recycle database connections this site does not have. Measured with the
in-memory layer, 200 subscribers x 100 messages: 2,100-2,200 deliveries/s and 2.5 s median
latency with the stock ``dispatch``, 4,400-4,900/s and 60 ms without the thread hop.
``--stock-dispatch`` keeps the stock ``dispatch``.

Other costs that are the peer's own and left as they are: the in-memory layer deep-copies
each message per recipient, and every ``receive`` scans all channels with queued messages
and all group memberships for expired entries, so its cost per delivery grows with the
number of connections. With 1,000 subscribers on one node that scan took half the
process's CPU and the node delivered about 1,000 messages/s (200 subscribers: 4,500/s), so
1,000 subscribers x 1,000 messages take on the order of 15 minutes in-memory.

uvicorn runs in the same process with the same settings as the Socket.IO peer
(``common.serve_asgi``):
``loop="uvloop"``, ``ws="websockets"``, ``access_log=False``, ``log_level="warning"``,
``lifespan="off"``, ``ws_per_message_deflate=False`` (no per-frame compression of small
payloads), ``ws_ping_interval=None`` (WebSocket-level keepalive pings are not needed on
loopback and would only add frames; clients answer them either way), ``backlog=4096``.

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

import uvloop
from channels.layers import get_channel_layer
from channels_site.asgi import build_application
from channels_site.consumers import group_of
from channels_site.settings import LAYERS, configure_django

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import publish_loop, serve_asgi

# uvicorn warns that ws="websockets" (the legacy websockets protocol) will later mean the
# sans-I/O one; the legacy implementation is the one asked for, keep stderr quiet.
warnings.filterwarnings("ignore", message=".*websockets.* implementation is deprecated")


async def publish(topic: str, count: int, size: int, rate: float) -> dict[str, Any]:
    """group_send count payloads to the topic's group, at rate per second (0: back to back)."""
    group_send = get_channel_layer().group_send
    group = group_of(topic)

    def one(payload: str) -> Awaitable[Any]:
        return group_send(group, {"type": "bench.msg", "text": payload})

    return await publish_loop(one, count, size, rate)


async def publish_command(cmd: dict[str, Any]) -> dict[str, Any]:
    return await publish(
        str(cmd["topic"]), int(cmd["count"]), int(cmd["size"]), float(cmd.get("rate", 0))
    )


async def unsupported(cmd: dict[str, Any]) -> dict[str, Any]:
    return {"error": "unsupported"}  # Channels has no request/response


async def serve(args: argparse.Namespace) -> int:
    app = build_application(stock_dispatch=args.stock_dispatch)
    return await serve_asgi(app, args.port, {"publish": publish_command, "requests": unsupported})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default=None, help="redis:// URL: channels_redis layer")
    parser.add_argument("--node", type=int, default=0, help="node index (for the logs)")
    parser.add_argument(
        "--layer",
        choices=sorted(LAYERS),
        default="pubsub",
        help="channels_redis layer with --redis (default: pubsub, the faster fan-out)",
    )
    parser.add_argument(
        "--stock-dispatch",
        action="store_true",
        help="keep Channels' per-message close_old_connections thread hop",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"channels[{args.node}] %(levelname)s %(name)s: %(message)s",
    )
    configure_django(args.redis, args.layer)
    return uvloop.run(serve(args))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
