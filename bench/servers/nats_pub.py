"""Publisher and W3 requester for nats-server: a nats-py client process.

``python bench/servers/nats_pub.py --port P`` (P: nats-server's client port) prints
``{"ready": true}`` once connected, then answers the command protocol
(bench/README.md): ``publish`` (``await nc.publish`` per message, a flush at the end, so
the answer comes once the server has them all) and ``requests`` (``nc.request`` to
``dev.<i>``, round-robin, timeout 5 s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nats
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import HOST, publish_loop, requests_loop, serve_commands


async def main(args: argparse.Namespace) -> None:
    nc = await nats.connect(
        f"nats://{HOST}:{args.port}",
        pending_size=64 * 1024 * 1024,
        max_reconnect_attempts=0,
        allow_reconnect=False,
    )

    async def publish(command: dict[str, Any]) -> dict[str, Any]:
        subject = command["topic"]

        def one(payload: str) -> Any:
            return nc.publish(subject, payload.encode())

        result = await publish_loop(one, command["count"], command["size"], command["rate"])
        await nc.flush(timeout=60)
        return result

    async def one_request(target: str, payload: str) -> Any:
        return await nc.request(target, payload.encode(), timeout=5)

    async def requests(command: dict[str, Any]) -> dict[str, Any]:
        targets = [f"dev.{i}" for i in range(command["count"])]
        return await requests_loop(
            one_request, targets, command["inflight"], command["seconds"], command["size"]
        )

    try:
        await serve_commands({"publish": publish, "requests": requests})
    finally:
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args()))
