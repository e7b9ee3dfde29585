"""A backend worker process for the cluster tests (run with ``sys.executable``).

Usage: ``python worker_app.py REDIS_URL PREFIX NAME``. Serves ``work.echo`` and
``work.slow`` (sleeps ``data["seconds"]``), answering ``{"worker": NAME, ...}``.
Prints ``ready NAME`` once its workers are live, and ``started NAME KEY`` when
a slow call begins, one line each, flushed. ``WSGATE_TEST_CLAIM_AFTER`` sets the
backend's ``claim_after`` (seconds). SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import wsgate


async def main(url: str, prefix: str, name: str) -> None:
    claim_after = float(os.environ.get("WSGATE_TEST_CLAIM_AFTER", "5"))
    gw = wsgate.connect_backend(url, prefix=prefix, claim_after=claim_after)

    @gw.method("work.echo")
    async def echo(call: wsgate.CallContext) -> dict[str, Any]:
        return {"worker": name, "data": call.data}

    @gw.method("work.slow")
    async def slow(call: wsgate.CallContext) -> dict[str, Any]:
        print(f"started {name} {call.data['key']}", flush=True)
        await asyncio.sleep(float(call.data["seconds"]))
        return {"worker": name, "data": call.data}

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with gw:
        print(f"ready {name}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
