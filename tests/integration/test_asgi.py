"""wsgate mounted in Starlette and FastAPI apps (docs/asgi.md), served by a real uvicorn.

The apps are the code blocks of docs/asgi.md, executed as written (with the test
secret in the environment), so the documentation is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import InvalidStatus

import wsgate
from conftest import SECRET
from wsgate.server.asgi import AsgiGateway

from ._client import connect, eventually, scaled

DOC = Path(__file__).resolve().parents[2] / "docs" / "asgi.md"
KEY = "control-api-key"  # the key of the Starlette example


def snippet(section: str) -> str:
    """The first ``python`` code block under ``## section`` in docs/asgi.md."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python block under {section}"
    return match.group(1)


def load_example(section: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """Run the example of ``section``; its globals (``node``, ``gateway``, ``app``)."""
    for name in list(os.environ):
        if name.startswith("WSGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WSGATE_JWT_SECRET", SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {}
    exec(compile(snippet(section), str(DOC), "exec"), namespace)
    return namespace


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn (lifespan on) on a free port; yields ``host:port``."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", ws="websockets-sansio", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), timeout=10, what="uvicorn started")
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(15))


async def test_starlette_mount_serves_clients_control_api_and_app_routes(monkeypatch, mint):
    example = load_example("Starlette", monkeypatch)
    node: wsgate.Node = example["node"]

    @node.method("orders.create")
    async def create(ctx: wsgate.CallContext) -> dict[str, object]:
        return {"order": 17, "user": ctx.user}

    async with serve(example["app"]) as host, httpx.AsyncClient(base_url=f"http://{host}") as http:
        # The app's own route still works.
        response = await http.get("/hello")
        assert (response.status_code, response.text) == (200, "hello")

        token = mint(user="alice", subscribe=["news.>"], call=["orders.*"])
        client = await connect(f"ws://{host}/gw/ws", token)
        assert client.welcome is not None and client.welcome["user"] == "alice"

        await client.roundtrip({"op": "sub", "id": 1, "topic": "news.>"})
        await node.publish("news.a", {"n": 1})
        await client.expect("msg", topic="news.a", data={"n": 1})

        # A burst arrives complete and in order (packed frames are unpacked by the client).
        for n in range(50):
            await node.publish("news.burst", {"n": n})
        for n in range(50):
            await client.expect("msg", topic="news.burst", data={"n": n})

        call = {"op": "call", "id": 2, "method": "orders.create", "data": {}}
        await client.roundtrip(call, data={"order": 17, "user": "alice"})

        task = asyncio.create_task(node.request(client.cid, {"q": "time?"}, timeout=scaled(5)))
        req = await client.expect("req", data={"q": "time?"})
        await client.send({"op": "reply", "id": req["id"], "data": {"a": 42}})
        assert await task == {"a": 42}

        # The control API through the same app, with the key.
        body = json.dumps({"topic": "news.api", "data": {"via": "api"}})
        response = await http.post(
            "/gw/api/publish", content=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert response.status_code == 200, response.text
        await client.expect("msg", topic="news.api", data={"via": "api"})
        assert (await http.get("/gw/api/stats")).status_code == 401
        stats = await http.get("/gw/api/stats", headers={"X-API-Key": KEY})
        assert stats.status_code == 200 and stats.json()["connections"] == 1, stats.text
        assert (await http.get("/gw/openapi.json")).status_code == 200
        assert (await http.get("/gw/elsewhere")).status_code == 404

        # A token from the query string, and from the first message.
        by_query = await connect(f"ws://{host}/gw/ws", mint(user="bob"), via="query")
        by_message = await connect(f"ws://{host}/gw/ws", mint(user="carol"), via="message")
        assert by_query.welcome is not None and by_message.welcome is not None
        assert not node.closing
    # Shutdown (uvicorn's lifespan) stopped the node; clients were closed.
    assert node.closing
    for each in (client, by_query, by_message):
        assert await each.closed() in (1012, 4001)


async def test_starlette_mount_closes_bad_tokens_and_bad_input(monkeypatch, mint):
    example = load_example("Starlette", monkeypatch)
    node: wsgate.Node = example["node"]
    async with serve(example["app"]) as host:
        url = f"ws://{host}/gw/ws"
        bad = await connect(url, "not-a-token", welcome=False)
        assert await bad.closed() == 4100

        client = await connect(url, mint(user="erin"))
        await client.ws.send("{not json")
        assert await client.closed() == 4102

        silent = await connect(url, None, welcome=False)
        await silent.ws.send(json.dumps({"op": "ping", "id": 1}))  # not an auth message
        assert await silent.closed() == 4100

        assert node.metrics.protocol_errors >= 1 and node.metrics.auth_failures >= 2


async def test_origin_subprotocol_and_auth_timeout(monkeypatch, mint):
    example = load_example(
        "Starlette",
        monkeypatch,
        WSGATE_ALLOWED_ORIGINS="https://app.example",
        WSGATE_HANDSHAKE_TIMEOUT="1",
    )
    gateway: AsgiGateway = example["gateway"]
    async with serve(example["app"]) as host:
        url = f"ws://{host}/gw/ws"
        token = mint(user="alice")
        # A refused origin never gets a session: an HTTP denial, or a close before accept.
        with pytest.raises(InvalidStatus) as denied:
            await connect(url, token, origin="https://evil.example")
        assert denied.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as unsupported:
            await connect(url, token, origin="https://app.example", subprotocols=["other"])
        assert unsupported.value.response.status_code == 400

        welcomed = await connect(url, token, origin="https://app.example", msgpack=True)
        assert welcomed.welcome is not None and welcomed.ws.subprotocol == "wsgate.v1.msgpack"

        idle = await connect(url, None, origin="https://app.example", welcome=False)
        assert await idle.closed(timeout=4) == 4005
        await eventually(lambda: len(gateway.connections) == 1, what="idle connection gone")


async def test_fastapi_lifespan_mount(monkeypatch, mint):
    example = load_example("FastAPI", monkeypatch)
    node: wsgate.Node = example["node"]

    @node.method("echo")
    async def echo(ctx: wsgate.CallContext) -> Any:
        return ctx.data

    async with serve(example["app"]) as host, httpx.AsyncClient(base_url=f"http://{host}") as http:
        assert (await http.get("/hello")).json() == {"hello": "world"}
        # Without API keys the control API is not there.
        assert (await http.get("/gw/api/stats", headers={"X-API-Key": KEY})).status_code == 404
        client = await connect(f"ws://{host}/gw/ws", mint(user="alice", call=["echo"]))
        await client.roundtrip(
            {"op": "call", "id": 1, "method": "echo", "data": [1, 2]}, data=[1, 2]
        )
    assert node.closing
