"""W3 backend for wsgate: a separate process with ``wsgate.connect_backend`` over Redis.

``python bench/servers/wsgate_backend.py --redis URL`` prints ``{"ready": true}``, then
answers ``{"cmd":"requests","count":100,"inflight":100,"seconds":10,"size":100}``: it keeps
``inflight`` ``gw.request("dev-i", payload, timeout=5)`` in flight, round-robin over
``dev-0..dev-(count-1)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import requests_loop, serve_commands

import wsgate


async def main(args: argparse.Namespace) -> None:
    async with wsgate.connect_backend(args.redis) as gw:

        def one(target: str, payload: str) -> Any:
            return gw.request(target, payload, timeout=5)

        async def requests(command: dict[str, Any]) -> dict[str, Any]:
            targets = [f"dev-{i}" for i in range(command["count"])]
            return await requests_loop(
                one, targets, command["inflight"], command["seconds"], command["size"]
            )

        await serve_commands({"requests": requests})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--port", type=int, default=0, help="unused (protocol uniformity)")
    uvloop.run(main(parser.parse_args()))
