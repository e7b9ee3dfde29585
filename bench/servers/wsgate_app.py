"""wsgate bench server: one node and its WebSocket server, driven by the command protocol.

``python bench/servers/wsgate_app.py --port P [--redis URL] [--node 0|1] [--pack|--no-pack]
[--max-connections N]``: prints ``{"ready": true}`` once listening, then answers JSON
commands on stdin (bench/README.md). Publications go through the backend path,
``await node.publish(topic, payload)``.

Bench configuration (public API only, ``wsgate.load_config`` with overrides): anonymous
subscribers allowed (subscribe to anything), JWT with the bench secret for devices and
idle connections, ``limits.rate_limit``/``rate_burst`` raised so that devices answering
thousands of requests per second are not closed with 4004, keepalive pings every 300 s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    HOST,
    JWT_SECRET,
    publish_loop,
    raise_nofile,
    serve_commands,
)

import wsgate


def bench_config(args: argparse.Namespace) -> wsgate.Config:
    overrides: dict[str, Any] = {
        "node_id": f"bench-{args.node}",
        "log_level": "WARNING",
        "host": HOST,
        "port": args.port,
        "pack_messages": args.pack,
        "max_connections": args.max_connections,
        "handshake_timeout": 60.0,
        "jwt_secret": JWT_SECRET,
        "anonymous": True,
        "anonymous_subscribe": (">",),
        "rate_limit": 1_000_000.0,
        "rate_burst": 1_000_000,
        "ping_interval": 300.0,
    }
    if args.redis:
        overrides["broker"] = args.redis
    if args.flush_interval is not None:
        overrides["flush_interval"] = args.flush_interval
    return wsgate.load_config(env={}, overrides=overrides)


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    node = wsgate.Node(bench_config(args))
    server = wsgate.Server(node)
    await server.start()

    async def publish(command: dict[str, Any]) -> dict[str, Any]:
        topic = command["topic"]

        def one(payload: str) -> Any:
            return node.publish(topic, payload)

        return await publish_loop(one, command["count"], command["size"], command["rate"])

    try:
        await serve_commands({"publish": publish})
    finally:
        await server.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", default="", help="broker URL; the memory broker without it")
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-connections", type=int, default=20_000)
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="server.flush_interval (default: wsgate's)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
