"""Every Python snippet of the README runs as written, against real parts.

A ``wsgate serve`` on the session's redis-server stands in for the README's
node (``ws://127.0.0.1:8765/ws``, ``redis://localhost:6379/0``); ``TOKEN`` is a
token it accepts. Embedding snippets get anonymous access on a free port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from contract._media import RedisServer
from wsgate import mint_token

README = Path(__file__).resolve().parents[2] / "README.md"
README_NODE = "ws://127.0.0.1:8765/ws"
README_REDIS = "redis://localhost:6379/0"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets() -> None:
    assert len(_python_blocks()) >= 3, "README lost its Python examples"


@pytest.fixture
async def readme_node(redis_server: RedisServer, wsgate_serve: Any, secret: str) -> Any:
    prefix = "readme" + uuid.uuid4().hex[:8]
    async with wsgate_serve(
        "--broker",
        redis_server.url,
        env={"WSGATE_JWT_SECRET": secret, "WSGATE_PREFIX": prefix},
    ) as served:
        yield served, prefix


@pytest.mark.parametrize("index", range(len(_python_blocks())))
async def test_readme_python_snippet_runs(
    index: int,
    monkeypatch: pytest.MonkeyPatch,
    readme_node: Any,
    redis_server: RedisServer,
    secret: str,
) -> None:
    served, prefix = readme_node
    monkeypatch.setenv("WSGATE_ANONYMOUS", "true")
    monkeypatch.setenv("WSGATE_PORT", "0")
    code = _python_blocks()[index]
    code = code.replace(README_NODE, served.url)
    code = code.replace(f'"{README_REDIS}"', f'"{redis_server.url}", prefix="{prefix}"')
    token = mint_token(secret, user="alice", subscribe=["chat.>"], publish=["chat.>"])
    namespace: dict[str, object] = {"__name__": "readme", "TOKEN": token}
    compiled = compile(code, f"README.md#python-{index}", "exec")
    # The snippets call asyncio.run(), which needs a thread without a running loop.
    await asyncio.wait_for(asyncio.to_thread(exec, compiled, namespace), timeout=60)


def test_configuration_page_matches_the_configuration_tree() -> None:
    import importlib.util  # noqa: PLC0415 - the script is not a package module

    script = Path(__file__).resolve().parents[2] / "scripts" / "config_docs.py"
    spec = importlib.util.spec_from_file_location("config_docs", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (README.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == module.render(), "run: python scripts/config_docs.py"
    assert "|  |" not in page, "a setting has no docstring in wsgate/config.py"


def _sh_block_with(marker: str) -> str:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    [block] = [b for b in blocks if marker in b]
    return block


async def test_readme_control_api_snippet_runs(wsgate_serve: Any) -> None:
    """The curl commands of the README, against a node with that API key."""
    snippet = _sh_block_with("/api/publish")
    async with wsgate_serve("--anonymous", "--api-key", "readme-key", "--api-port", "0") as served:
        assert served.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(served.proc.stdout.readline), 15)
        match = re.search(r"control API on (http://[^/\s]+)/api/", line)
        assert match, line
        script = snippet.replace("http://127.0.0.1:8766", match.group(1))
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", script],
            env={**os.environ, "KEY": "readme-key"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.replace("}{", "}\n{").splitlines()
    assert json.loads(first) == {"ok": True}
    assert json.loads(second)["error"]["code"] == "not_connected"


async def test_readme_cli_snippet_runs(
    readme_node: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The CLI lines of the README (all but `listen`, which waits for messages)."""
    _served, prefix = readme_node
    lines = [
        line
        for line in _sh_block_with("wsgate publish").splitlines()
        if line.strip() and "wsgate listen" not in line
    ]
    script = "\n".join(lines).replace(README_REDIS, redis_server.url)
    bin_dir = str(Path(sys.executable).parent)
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        env={**os.environ, "WSGATE_PREFIX": prefix, "PATH": bin_dir + ":" + os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # device-7 is not connected: request, send and info report it; the rest succeed.
    assert "connection 'device-7' is not connected" in result.stderr, result.stderr
    assert "usage" not in result.stderr.lower(), result.stderr
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status["nodes"] and status["connections"] == 0, status
