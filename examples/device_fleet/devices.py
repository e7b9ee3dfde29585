"""Simulate a fleet of devices that answer the gateway's requests.

Each device is one :func:`wsgate.connect` client whose token claims its serial
(``dev-0001``, ...) as connection id (``cid``), so a backend reaches it by serial
with ``request("dev-0001", {"cmd": "status"})``. Commands:

* ``{"cmd": "status"}`` -> ``{"serial", "battery", "uptime"}``
* ``{"cmd": "reboot"}`` -> ``{"ok": true}`` (uptime starts again)
* anything else -> the error ``unknown_command``

Devices named with ``--slow`` answer after :data:`SLOW_DELAY` seconds (a bad
link). Tokens are minted, for every connection attempt, with the gateway's
secret: ``WSGATE_JWT_SECRET`` or ``auth.jwt_secret`` of ``--config``. Clients
reconnect by themselves when the gateway restarts. Run::

    python examples/device_fleet/devices.py --url ws://127.0.0.1:8765/ws --config .wsgate/dev.toml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import wsgate

SLOW_DELAY = 30.0
"""Seconds a slow device takes to answer: longer than any backend waits."""


def serial_of(number: int) -> str:
    """The serial (and connection id) of device ``number``, counted from 1."""
    return f"dev-{number:04d}"


class Device:
    """One simulated device and its connection."""

    def __init__(self, url: str, secret: str, number: int, *, slow: bool = False) -> None:
        self.serial = serial_of(number)
        self.battery = 100 - 7 * number % 60
        self.slow = slow
        self.booted = time.monotonic()
        self._secret = secret
        self.client = wsgate.connect(url, token_provider=self._token, reconnect=True)
        self.client.on_request(self.handle)

    async def _token(self) -> str:
        return wsgate.mint_token(self._secret, user=self.serial, connection_id=self.serial)

    async def handle(self, data: Any) -> Any:
        """Answer one request from the gateway."""
        if self.slow:
            await asyncio.sleep(SLOW_DELAY)
        command = data.get("cmd") if isinstance(data, dict) else None
        if command == "status":
            uptime = round(time.monotonic() - self.booted, 1)
            return {"serial": self.serial, "battery": self.battery, "uptime": uptime}
        if command == "reboot":
            self.booted = time.monotonic()
            return {"ok": True}
        raise wsgate.RemoteError("unknown_command", f"{self.serial} cannot {command!r}")


async def start_fleet(url: str, secret: str, count: int, slow: Iterable[str] = ()) -> list[Device]:
    """Connect ``count`` devices; returns once every one is connected."""
    slow = set(slow)
    devices = [Device(url, secret, n, slow=serial_of(n) in slow) for n in range(1, count + 1)]
    await asyncio.gather(*(device.client.start() for device in devices))
    return devices


async def stop_fleet(devices: list[Device]) -> None:
    """Close every device's connection."""
    await asyncio.gather(*(device.client.close() for device in devices))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="the gateway")
    parser.add_argument("--config", help="TOML file with auth.jwt_secret (e.g. .wsgate/dev.toml)")
    parser.add_argument("--count", type=int, default=5, help="how many devices (default 5)")
    parser.add_argument(
        "--slow", action="append", default=[], metavar="SERIAL", help="a device that is slow"
    )
    args = parser.parse_args()
    secret = wsgate.load_config(args.config).auth.jwt_secret
    if not secret:
        parser.error("no secret: set WSGATE_JWT_SECRET or pass --config")
    devices = await start_fleet(args.url, secret, args.count, args.slow)
    print(f"{len(devices)} devices connected to {args.url}: {devices[0].serial} ...", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await stop_fleet(devices)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
