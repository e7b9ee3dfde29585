"""The whole device fleet example in one process, with nothing to set up.

Starts a gateway node on a free port (memory broker, a random secret), connects
the simulated devices of ``devices.py`` (five healthy ones and ``dev-0006``, a
slow one), then sends commands to every device by serial with ``node.request``
and prints the replies; ``dev-0007`` is not connected. Exits 0 when done::

    python examples/device_fleet/run.py
"""

from __future__ import annotations

import asyncio
import secrets

from backend import poll
from devices import serial_of, start_fleet, stop_fleet

import wsgate

FLEET = 5
TIMEOUT = 1.0


async def main() -> None:
    secret = secrets.token_urlsafe(48)
    config = wsgate.load_config(env={}, overrides={"jwt_secret": secret, "port": 0})
    node = wsgate.Node(config)
    server = wsgate.Server(node)
    await server.start()
    try:
        slow = serial_of(FLEET + 1)
        devices = await start_fleet(server.url, secret, FLEET + 1, slow=[slow])
        print(f"gateway at {server.url}; {len(devices)} devices connected ({slow} is slow)\n")
        try:
            await poll(node.request, [serial_of(n) for n in range(1, FLEET + 3)], TIMEOUT)
        finally:
            await stop_fleet(devices)
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
