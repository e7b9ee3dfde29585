"""The HTTP control API (wsgate.server.control): in process, under schemathesis, and via the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import make_config
from wsgate import ConfigError, Node, load_config
from wsgate.server.control import MAX_BODY, ControlServer, control_app

from ._client import connect, eventually, scaled

KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def api(gw: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = control_app(gw.node, [KEY, "other-key"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
        yield client


# -- authentication -------------------------------------------------------------------


async def test_missing_key_is_401_and_wrong_key_403(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/stats")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"

    response = await api.get("/api/stats", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "nope" not in response.text and KEY not in response.text

    assert (await api.get("/api/stats", headers={"X-API-Key": "nope"})).status_code == 403
    assert (await api.get("/api/stats", headers={"Authorization": "Basic xyz"})).status_code == 401


async def test_either_header_and_any_configured_key_is_accepted(api: httpx.AsyncClient) -> None:
    for headers in (AUTH, {"X-API-Key": KEY}, {"Authorization": "bearer other-key"}):
        response = await api.get("/api/stats", headers=headers)
        assert response.status_code == 200, headers
        assert "node" in response.json()


def test_the_api_needs_keys(gw: Any) -> None:
    with pytest.raises(ConfigError):
        control_app(gw.node, [])


# -- routes ---------------------------------------------------------------------------


async def test_unknown_route_404_and_wrong_method_405(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/nope", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await api.get("/api/publish", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert (await api.post("/api/stats", headers=AUTH)).status_code == 405
    assert (await api.post("/openapi.json")).status_code == 405


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"topic": "a", "data": NaN}', "not valid JSON"),
        (b'{"data": 1}', "topic"),
        (b'{"topic": 5, "data": 1}', "topic"),
        (b'{"topic": "a.*", "data": 1}', ""),
        (b'{"topic": "a..b", "data": 1}', ""),
        (b'{"topic": "a"}', "exactly one"),
        (b'{"topic": "a", "data": 1, "bin": "AA=="}', "exactly one"),
        (b'{"topic": "a", "bin": "not base64!"}', "base64"),
        (b'{"topic": "a", "data": 1, "extra": 2}', "extra"),
    ],
)
async def test_bad_publish_bodies_are_400(
    api: httpx.AsyncClient, body: bytes, fragment: str
) -> None:
    response = await api.post("/api/publish", content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert fragment in error["message"]


async def test_body_over_one_mib_is_413(api: httpx.AsyncClient) -> None:
    body = json.dumps({"topic": "a", "data": "x" * MAX_BODY}).encode()
    response = await api.post("/api/publish", content=body, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


async def test_publish_reaches_subscribers(gw: Any, api: httpx.AsyncClient, mint: Any) -> None:
    client = await gw.connect(mint(user="u", subscribe=[">"]))
    await client.roundtrip({"op": "sub", "id": 1, "topic": "news.>"})
    response = await api.post(
        "/api/publish", json={"topic": "news.tech", "data": {"a": 1}}, headers=AUTH
    )
    assert response.status_code == 200 and response.json() == {"ok": True}
    message = await client.expect("msg")
    assert message["topic"] == "news.tech" and message["data"] == {"a": 1}

    response = await api.post(
        "/api/publish",
        json={"topic": "news.raw", "bin": base64.b64encode(b"\x00\xff").decode()},
        headers=AUTH,
    )
    assert response.status_code == 200
    message = await client.expect("msg")
    assert base64.b64decode(message["bin"]) == b"\x00\xff"


async def test_send_send_to_user_broadcast(gw: Any, api: httpx.AsyncClient, mint: Any) -> None:
    client = await gw.connect(mint(user="alice"))
    cid = client.welcome["cid"]
    response = await api.post("/api/send", json={"connection_id": cid, "data": 1}, headers=AUTH)
    assert response.json() == {"delivered": True}
    assert (await client.expect("push"))["data"] == 1
    response = await api.post(
        "/api/send", json={"connection_id": "nobody", "data": 1}, headers=AUTH
    )
    assert response.status_code == 200 and response.json() == {"delivered": False}

    response = await api.post("/api/send_to_user", json={"user": "alice", "data": 2}, headers=AUTH)
    assert response.json() == {"reached": 1}
    assert (await client.expect("push"))["data"] == 2
    response = await api.post("/api/send_to_user", json={"user": "bob", "data": 2}, headers=AUTH)
    assert response.json() == {"reached": 0}

    response = await api.post("/api/broadcast", json={"data": "all"}, headers=AUTH)
    assert response.json() == {"ok": True}
    assert (await client.expect("push"))["data"] == "all"


async def test_info_presence_stats_disconnect(gw: Any, api: httpx.AsyncClient, mint: Any) -> None:
    client = await gw.connect(mint(user="alice", subscribe=[">"]))
    cid = client.welcome["cid"]
    await client.roundtrip({"op": "sub", "id": 1, "topic": "room.*"})

    response = await api.get(f"/api/connections/{cid}", headers=AUTH)
    assert response.status_code == 200
    info = response.json()
    assert info["id"] == cid and info["user"] == "alice" and info["subscriptions"] == ["room.*"]
    response = await api.get("/api/connections/nobody", headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"

    response = await api.get("/api/presence", params={"topic": "room.1"}, headers=AUTH)
    assert [c["id"] for c in response.json()["connections"]] == [cid]
    response = await api.get("/api/presence", params={"topic": "lobby"}, headers=AUTH)
    assert response.json() == {"connections": []}
    assert (await api.get("/api/presence", headers=AUTH)).status_code == 400
    response = await api.get("/api/presence", params={"topic": "room.*"}, headers=AUTH)
    assert response.status_code == 400

    stats = (await api.get("/api/stats", headers=AUTH)).json()
    assert stats["node"] == gw.node.id and stats["connections"] == 1

    response = await api.post(
        "/api/disconnect", json={"connection_id": cid, "code": 1, "reason": "x"}, headers=AUTH
    )
    assert response.status_code == 400
    response = await api.post(
        "/api/disconnect", json={"connection_id": cid, "code": 4500, "reason": "bye"}, headers=AUTH
    )
    assert response.json() == {"disconnected": True}
    assert await client.closed() == 4500
    await eventually(lambda: gw.node.hub.get(cid) is None)
    response = await api.post("/api/disconnect", json={"connection_id": cid}, headers=AUTH)
    assert response.json() == {"disconnected": False}


# -- request --------------------------------------------------------------------------


async def _answer(ws: Any, reply: Any) -> None:
    req = await ws.expect("req")
    await ws.send({"op": "reply", "id": req["id"], **reply})


async def test_request_round_trips(gw: Any, api: httpx.AsyncClient, mint: Any) -> None:
    client = await gw.connect(mint(user="alice"))
    cid = client.welcome["cid"]

    async def ask(body: dict[str, Any]) -> httpx.Response:
        return await api.post("/api/request", json={"connection_id": cid, **body}, headers=AUTH)

    answering = asyncio.create_task(_answer(client, {"data": {"pong": 1}}))
    response = await ask({"data": "ping"})
    await answering
    assert response.status_code == 200 and response.json() == {"data": {"pong": 1}}

    answering = asyncio.create_task(_answer(client, {"bin": base64.b64encode(b"\x01").decode()}))
    response = await ask({"bin": base64.b64encode(b"\x02").decode()})
    await answering
    assert response.json() == {"bin": base64.b64encode(b"\x01").decode()}

    answering = asyncio.create_task(
        _answer(client, {"error": {"code": "nope", "message": "no", "data": [1]}})
    )
    response = await ask({"data": None})
    await answering
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "remote_error"
    assert error["remote"] == {"code": "nope", "message": "no", "data": [1]}

    response = await ask({"data": None, "timeout": scaled(0.2)})
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    await client.expect("req")  # the one that timed out

    assert (await ask({"data": None, "timeout": 0})).status_code == 400
    assert (await ask({"data": None, "timeout": "1"})).status_code == 400

    response = await api.post(
        "/api/request", json={"connection_id": "nobody", "data": 1}, headers=AUTH
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_connected"

    pending = asyncio.create_task(ask({"data": None, "timeout": scaled(5)}))
    await client.expect("req")
    await client.close()
    response = await pending
    assert response.status_code == 410 and response.json()["error"]["code"] == "connection_lost"


# -- OpenAPI, under schemathesis against a real uvicorn -------------------------------


async def test_openapi_document_describes_every_route(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/publish",
        "/api/send",
        "/api/send_to_user",
        "/api/broadcast",
        "/api/request",
        "/api/disconnect",
        "/api/connections/{connection_id}",
        "/api/presence",
        "/api/stats",
    }
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}


@pytest.fixture
def served_api() -> Iterator[str]:
    """A node and its control API on uvicorn, port 0, in a thread with its own loop."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:

        node = Node(make_config(anonymous=True))
        await node.start()
        server = ControlServer(control_app(node, [KEY]), "127.0.0.1", 0)
        await server.start()
        stop = asyncio.Event()
        state["url"] = f"http://127.0.0.1:{server.port}"
        state["stop"] = (asyncio.get_running_loop(), stop)
        ready.set()
        await stop.wait()
        await server.stop()
        await node.stop()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(scaled(10)), "the control API did not start"
    try:
        yield state["url"]
    finally:
        loop, stop = state["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(scaled(10))


def test_schemathesis_finds_no_server_errors_and_conforming_responses(served_api: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served_api}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=served_api, headers=AUTH, checks=checks)

        check()


# -- the CLI through the control API --------------------------------------------------

_CONTROL = re.compile(r"control API on (http://\S+)")


async def test_cli_publishes_through_the_control_api(wsgate_serve: Any, wsgate_run: Any) -> None:
    async with wsgate_serve("--anonymous", "--api-key", "k", "--api-port", "0") as served:
        assert served.proc.stdout is not None
        line = await asyncio.to_thread(served.proc.stdout.readline)
        match = _CONTROL.search(line)
        assert match, line
        url = match.group(1)
        assert not url.endswith(":0/api/")

        client = await connect(served.url, None)
        try:
            await client.roundtrip({"op": "sub", "id": 1, "topic": "topic"})
            result = await asyncio.to_thread(
                wsgate_run, "publish", "--url", url, "--api-key", "k", "topic", '{"a":1}'
            )
            assert result.returncode == 0, result.stderr
            message = await client.expect("msg")
            assert message["topic"] == "topic" and message["data"] == {"a": 1}

            cid = client.welcome["cid"]
            result = await asyncio.to_thread(
                wsgate_run, "info", "--url", url, cid, env={"WSGATE_API_KEY": "k"}
            )
            assert result.returncode == 0, (result.stdout, result.stderr)
            assert json.loads(result.stdout)["id"] == cid

            result = await asyncio.to_thread(
                wsgate_run, "send", "--url", url, "--api-key", "k", "nobody", "1"
            )
            assert result.returncode == 1 and result.stdout.strip() == "false"

            result = await asyncio.to_thread(
                wsgate_run, "publish", "--url", url, "--api-key", "wrong", "topic", "1"
            )
            assert result.returncode == 1
            assert "refused the API key" in result.stderr
            assert "wrong" not in result.stderr
        finally:
            await client.close()
        assert "wrong" not in served.stderr() and "'k'" not in served.stderr()


def test_api_keys_come_from_the_environment_and_stay_out_of_repr() -> None:
    config = load_config(env={"WSGATE_API_KEYS": "key-one, key-two", "WSGATE_API_PORT": "9000"})
    assert config.server.api_keys == ("key-one", "key-two")
    assert config.server.api_port == 9000
    assert "key-one" not in repr(config) and "key-two" not in repr(config)
    assert load_config(env={}).server.api_keys == ()
