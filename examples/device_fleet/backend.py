"""Send commands to devices by serial and print their replies, from a backend process.

No node runs here: :func:`wsgate.connect_backend` joins the gateway's broker
(Redis; the nodes must use the same URL and prefix) and reaches each device on
whichever node holds its connection. The poll itself, :func:`poll`, only needs a
``request(connection_id, data, timeout)``: ``run.py`` hands it ``Node.request``.

    python examples/device_fleet/backend.py --broker redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import wsgate

Request = Callable[[str, Any, float], Awaitable[Any]]

COMMANDS = [{"cmd": "reboot"}, {"cmd": "self_destruct"}]
"""Sent to the first device after the status round: one ok, one unknown_command."""


async def ask(request: Request, serial: str, command: dict[str, Any], timeout: float) -> str:
    """One command to one device, as a line of the table."""
    try:
        reply = await request(serial, command, timeout)
    except wsgate.NotConnected:
        outcome = "OFFLINE (no connection with this id)"
    except wsgate.RequestTimeout:
        outcome = f"TIMEOUT (no reply within {timeout:g} s)"
    except wsgate.RemoteError as exc:
        outcome = f"ERROR {exc.code}: {exc.remote_message}"
    except wsgate.ConnectionLost:
        outcome = "LOST (disconnected before replying)"
    else:
        if command["cmd"] == "status":
            outcome = f"battery {reply['battery']}%, up {reply['uptime']} s"
        else:
            outcome = f"reply {reply}"
    return f"{serial:<10} {command['cmd']:<14} {outcome}"


async def poll(request: Request, serials: Iterable[str], timeout: float) -> None:
    """Ask every device for its status at once, then try other commands on the first."""
    serials = list(serials)
    status = {"cmd": "status"}
    print(f"{'DEVICE':<10} {'COMMAND':<14} REPLY", flush=True)
    for line in await asyncio.gather(*(ask(request, s, status, timeout) for s in serials)):
        print(line, flush=True)
    for command in COMMANDS:
        print(await ask(request, serials[0], command, timeout), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", help="the nodes' broker URL (or WSGATE_BROKER), Redis")
    parser.add_argument("--prefix", help="the nodes' broker prefix (or WSGATE_PREFIX)")
    parser.add_argument("--config", help="the nodes' TOML configuration, for the two above")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    parser.add_argument(
        "serials",
        nargs="*",
        default=[f"dev-{n:04d}" for n in range(1, 8)],
        help="devices to ask (default dev-0001 .. dev-0007)",
    )
    args = parser.parse_args()
    config = wsgate.load_config(
        args.config, overrides={"broker": args.broker, "prefix": args.prefix}
    )
    url = config.broker.broker
    if not url.startswith("redis"):
        parser.error(f"a backend process needs the nodes' Redis broker, not {url}: pass --broker")
    async with wsgate.connect_backend(url, prefix=config.broker.prefix) as gateway:
        await poll(gateway.request, args.serials, args.timeout)


if __name__ == "__main__":
    asyncio.run(main())
