"""The device fleet example runs as its README says.

``run.py`` is the one-command version (a node in process); the second test runs
``devices.py`` and ``backend.py`` as separate processes around a real
``wsgate serve`` on the session's redis-server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from contract._media import RedisServer

FLEET = Path(__file__).resolve().parents[2] / "examples" / "device_fleet"


def _env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    return {**env, **variables}


def _check_table(output: str) -> None:
    for n in range(1, 6):
        assert f"dev-000{n}   status         battery " in output, output
    assert "dev-0006   status         TIMEOUT" in output, output
    assert "dev-0007   status         OFFLINE" in output, output
    assert "dev-0001   reboot         reply {'ok': True}" in output, output
    assert "ERROR unknown_command" in output, output


def test_run_py_polls_the_fleet() -> None:
    done = subprocess.run(
        [sys.executable, str(FLEET / "run.py")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _check_table(done.stdout)


async def test_devices_and_backend_as_separate_processes(
    redis_server: RedisServer, wsgate_serve: Any, secret: str
) -> None:
    prefix = "fleet" + uuid.uuid4().hex[:8]
    env = _env(WSGATE_JWT_SECRET=secret, WSGATE_PREFIX=prefix)
    async with wsgate_serve("--broker", redis_server.url, env=env) as served:
        devices = await asyncio.create_subprocess_exec(
            sys.executable,
            str(FLEET / "devices.py"),
            *("--url", served.url, "--count", "6", "--slow", "dev-0006"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert devices.stdout is not None
            line = await asyncio.wait_for(devices.stdout.readline(), timeout=15)
            assert b"6 devices connected" in line, line
            backend = await asyncio.create_subprocess_exec(
                sys.executable,
                str(FLEET / "backend.py"),
                *("--broker", redis_server.url, "--prefix", prefix, "--timeout", "1"),
                env=_env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(backend.communicate(), timeout=15)
            assert backend.returncode == 0, err.decode()
            _check_table(out.decode())
        finally:
            if devices.returncode is None:
                devices.kill()
            await devices.wait()
