"""The ``wsgate`` client and backend commands against a real ``wsgate serve`` on Redis.

One node per test (its own key prefix), a test client connected to it, and the
commands run as subprocesses reaching the node through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import wsgate
from conftest import cli_env
from contract._media import RedisServer
from integration._client import Client, connect, scaled

COMMANDS = (
    "listen",
    "publish",
    "send",
    "send-user",
    "broadcast",
    "request",
    "disconnect",
    "info",
    "presence",
    "status",
)


@dataclass
class Setup:
    url: str
    node_id: str
    broker: str
    prefix: str
    secret: str
    run: Callable[..., subprocess.CompletedProcess[str]]

    @property
    def env(self) -> dict[str, str]:
        return {"WSGATE_BROKER": self.broker, "WSGATE_PREFIX": self.prefix}

    def token(self, user: str, **grants: Any) -> str:
        return wsgate.mint_token(self.secret, user=user, **grants)

    async def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``wsgate ARGS`` without blocking the loop (test clients answer meanwhile)."""
        return await asyncio.to_thread(self.run, *args, env=self.env if env is None else env)

    def backend(self) -> wsgate.Backend:
        return wsgate.connect_backend(self.broker, prefix=self.prefix)


@pytest.fixture
async def node(
    redis_server: RedisServer, wsgate_serve: Any, wsgate_run: Any, secret: str
) -> AsyncIterator[Setup]:
    prefix = "cli" + uuid.uuid4().hex[:10]
    node_id = f"{prefix}-n0"
    env = {"WSGATE_JWT_SECRET": secret, "WSGATE_PREFIX": prefix}
    async with wsgate_serve("--broker", redis_server.url, "--node-id", node_id, env=env) as served:
        yield Setup(served.url, node_id, redis_server.url, prefix, secret, wsgate_run)


@contextlib.asynccontextmanager
async def client_of(setup: Setup, user: str = "alice", **grants: Any) -> AsyncIterator[Client]:
    client = await connect(setup.url, setup.token(user, **grants))
    try:
        yield client
    finally:
        await client.close()


def out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsgate: error: "), result.stderr
    return lines[0]


async def test_help_of_every_command_names_its_arguments(wsgate_run):
    results = await asyncio.gather(
        *(asyncio.to_thread(wsgate_run, command, "--help") for command in COMMANDS)
    )
    helps = dict(zip(COMMANDS, results, strict=True))
    for command, result in helps.items():
        assert result.returncode == 0, (command, result.stderr)
        assert f"usage: wsgate {command}" in result.stdout
        if command != "listen":
            assert "--broker URL" in result.stdout and "--prefix P" in result.stdout, command
    assert all(w in helps["listen"].stdout for w in ("URL", "PATTERN", "--token", "--count"))
    assert "--encoding {json,msgpack}" in helps["listen"].stdout
    for command in ("publish", "presence"):
        assert "TOPIC" in helps[command].stdout
    for command in ("send", "request", "disconnect", "info"):
        assert "CONNECTION_ID" in helps[command].stdout
    for command in ("publish", "send", "send-user", "broadcast", "request"):
        assert "DATA" in helps[command].stdout and "--bytes" in helps[command].stdout
    assert "USER" in helps["send-user"].stdout
    assert "--timeout S" in helps["request"].stdout
    assert "--code N" in helps["disconnect"].stdout and "--reason R" in helps["disconnect"].stdout


async def test_a_memory_or_missing_broker_is_refused(wsgate_run):
    for env in ({}, {"WSGATE_BROKER": "memory://"}):
        result = await asyncio.to_thread(wsgate_run, "status", env=env)
        assert result.returncode == 2
        assert "memory://" in error_line(result) and "--broker" in result.stderr
    unreachable = await asyncio.to_thread(
        wsgate_run, "send", "x", "1", "--broker", "redis://127.0.0.1:1/0"
    )
    assert unreachable.returncode == 1
    assert "cannot connect" in error_line(unreachable)


async def test_publish_send_and_broadcast_reach_the_client(node):
    grants = {"subscribe": ["news.>"]}
    async with client_of(node, **grants) as client:
        await client.roundtrip({"op": "sub", "id": 1, "topic": "news.>"})

        published = await node.cli("publish", "news.tech", '{"title": "hi", "n": [1, 2]}')
        assert published.returncode == 0 and published.stdout == "", published.stderr
        await client.expect("msg", topic="news.tech", data={"title": "hi", "n": [1, 2]})
        # Not JSON: the string itself; --bytes: raw bytes (bin, base64 on a JSON connection).
        assert (await node.cli("publish", "news.tech", "plain text")).returncode == 0
        await client.expect("msg", topic="news.tech", data="plain text")
        assert (await node.cli("publish", "news.tech", "raw", "--bytes")).returncode == 0
        await client.expect("msg", topic="news.tech", bin="cmF3")

        assert out(await node.cli("send", client.cid, '"42"')) is True
        await client.expect("push", data="42")
        missing = await node.cli("send", "no-such-connection", "1")
        assert missing.returncode == 1 and json.loads(missing.stdout) is False

        assert out(await node.cli("send-user", "alice", "7")) == 1
        await client.expect("push", data=7)
        nobody = await node.cli("send-user", "bob", "7")
        assert nobody.returncode == 1 and json.loads(nobody.stdout) == 0

        assert (await node.cli("broadcast", "[true, null]")).returncode == 0
        await client.expect("push", data=[True, None])

        # Flags instead of the environment; DATA from stdin.
        flags = ("--broker", node.broker, "--prefix", node.prefix)
        piped = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "wsgate.cli", "publish", "news.pipe", "-", *flags],
            input='{"from": "stdin"}\n',
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=scaled(30),
            check=False,
        )
        assert piped.returncode == 0, piped.stderr
        await client.expect("msg", topic="news.pipe", data={"from": "stdin"})

        bad_topic = await node.cli("publish", "news.*", "1")
        assert bad_topic.returncode == 2, bad_topic.stderr
        error_line(bad_topic)
        await client.no_message(within=scaled(0.2))


async def test_request_is_answered_by_the_client(node):
    async with client_of(node) as client:

        async def answer(reply: dict[str, Any]) -> dict[str, Any]:
            req = await client.expect("req", timeout=scaled(20))
            await client.send({"op": "reply", "id": req["id"], **reply})
            return req

        answering = asyncio.create_task(answer({"data": {"answer": 42, "raw": None}}))
        result = await node.cli("request", client.cid, '{"q": "life"}')
        assert (await answering)["data"] == {"q": "life"}
        assert out(result) == {"answer": 42, "raw": None}

        error = {"code": "invalid_input", "message": "no", "data": {"field": "q"}}
        answering = asyncio.create_task(answer({"error": error}))
        failed = await node.cli("request", client.cid, "x")
        await answering
        assert failed.returncode == 1 and failed.stdout == ""
        line = error_line(failed)
        assert "invalid_input" in line and "no" in line and '"field"' in line

        slow = await node.cli("request", client.cid, "x", "--timeout", str(scaled(0.5)))
        assert slow.returncode == 1
        assert "did not reply" in error_line(slow)
        await client.expect("req")  # it came, nobody answered

    unknown = await node.cli("request", "no-such-connection", "1")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "not connected" in error_line(unknown)


async def test_info_presence_and_status_print_json(node):
    async with client_of(node, subscribe=["chat.>"]) as client:
        await client.roundtrip({"op": "sub", "id": 1, "topic": "chat.>"})

        info = out(await node.cli("info", client.cid))
        assert info["id"] == client.cid and info["user"] == "alice"
        assert info["node"] == node.node_id and info["subscriptions"] == ["chat.>"]

        missing = await node.cli("info", "no-such-connection")
        assert missing.returncode == 1 and json.loads(missing.stdout) is None

        present = out(await node.cli("presence", "chat.room"))
        assert [entry["id"] for entry in present] == [client.cid]
        assert out(await node.cli("presence", "weather")) == []

        status = out(await node.cli("status"))
        assert status["nodes"] == [node.node_id]
        assert status["connections"] == 1
        assert status["per_node"][node.node_id] == {"connections": 1, "users": 1, "patterns": 1}


async def test_disconnect_closes_the_client_with_the_code(node):
    async with client_of(node) as client:
        result = await node.cli("disconnect", client.cid, "--code", "4321", "--reason", "bye")
        assert out(result) is True
        assert await client.closed(timeout=10) == 4321
        assert client.close_reason == "bye"
    # The node drops the presence entry right after the close (one Redis round
    # trip later): until then a second disconnect may still reach it.
    deadline = time.monotonic() + 10
    while True:
        again = await node.cli("disconnect", client.cid)
        if again.returncode == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert again.returncode == 1 and json.loads(again.stdout) is False
    bad = await node.cli("disconnect", "x", "--code", "1006")
    assert bad.returncode == 2
    error_line(bad)


@contextlib.asynccontextmanager
async def listening(*args: str) -> AsyncIterator[subprocess.Popen[str]]:
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "wsgate.cli", "listen", *args],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, scaled(10))


async def subscribed(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    async with asyncio.timeout(scaled(15)):
        line = await asyncio.to_thread(proc.stderr.readline)
    assert "subscribed to" in line, line


async def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=scaled(15))
    return proc.returncode, stdout, stderr


async def next_line(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(scaled(15)):
        return json.loads(await asyncio.to_thread(proc.stdout.readline))


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_listen_prints_publications_and_stops_after_count(node, encoding):
    token = node.token("watcher", subscribe=["news.>", "alerts.*"])
    args = (node.url, "news.>", "alerts.*", "--token", token, "--count", "3")
    async with listening(*args, "--encoding", encoding) as proc, node.backend() as backend:
        await subscribed(proc)
        await backend.publish("news.tech", {"title": "hello"})
        assert await next_line(proc) == {"topic": "news.tech", "data": {"title": "hello"}}
        await backend.publish("weather.today", "not listened to")
        await backend.publish("alerts.fire", b"\x00\xff")
        assert await next_line(proc) == {"topic": "alerts.fire", "data": {"$bytes_b64": "AP8="}}
        await backend.publish("news.sport", "goal")
        await backend.publish("news.late", "after the count")
        status, stdout, stderr = await finished(proc)
    assert status == 0, stderr
    assert [json.loads(line) for line in stdout.splitlines()] == [
        {"topic": "news.sport", "data": "goal"}
    ]


async def test_listen_ends_on_a_terminal_close_and_on_sigint(node):
    async with listening(node.url, "news.>", "--token", "not-a-token") as proc:
        status, stdout, stderr = await finished(proc)
    assert status == 1 and stdout == ""
    assert "4100" in stderr and len(stderr.strip().splitlines()) == 1, stderr

    denied = node.token("w", subscribe=["news.>"])
    async with listening(node.url, "secret.>", "--token", denied) as proc:
        status, stdout, stderr = await finished(proc)
    assert status == 1 and "permission_denied" in stderr and "secret.>" in stderr, stderr

    token = node.token("w", subscribe=["news.>"])
    async with listening(node.url, "news.>", "--token", token) as proc:
        await subscribed(proc)
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        status, stdout, stderr = await finished(proc)
    assert status == 0 and stdout == "", stderr

    # Closed by the backend with an application code: the client does not reconnect.
    victim_token = node.token("v", subscribe=["news.>"], connection_id="victim-1")
    async with listening(node.url, "news.>", "--token", victim_token) as proc:
        await subscribed(proc)
        async with node.backend() as backend:
            assert await backend.disconnect("victim-1", 4321, "go away")
        status, stdout, stderr = await finished(proc)
    assert status == 1 and "4321" in stderr and "go away" in stderr, stderr
