"""Connecting and authenticating: where the token may travel, and every way to fail."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from wsgate import CloseCode, mint_token

from ._client import JSON_PROTOCOL, connect, scaled

OTHER_SECRET = "some-other-secret-" + "fedcba9876543210" * 2


@pytest.mark.parametrize("via", ["header", "query", "message"])
async def test_token_accepted_from_header_query_or_auth_message(gw, mint, via):
    token = mint(user="alice", subscribe=["news.>", "alerts"], channels=["news.>", "alerts"])
    client = await gw.connect(token, via=via)

    welcome = client.welcome
    assert welcome is not None
    assert welcome["user"] == "alice"
    assert welcome["node"] == gw.node.id
    assert welcome["subs"] == ["alerts", "news.>"]
    assert welcome["ping_interval"] == gw.node.config.keepalive.ping_interval
    info = await gw.node.connection_info(welcome["cid"])
    assert info is not None and info.user == "alice"
    assert gw.node.metrics.connections_accepted == 1

    # The default subscriptions are live, not just reported.
    await gw.node.publish("news.tech", {"n": 1})
    await client.expect("msg", topic="news.tech", data={"n": 1})


async def test_json_is_negotiated_when_offered(gw, mint):
    client = await gw.connect(mint(user="alice"), subprotocols=["x-unknown", JSON_PROTOCOL])
    assert client.ws.subprotocol == JSON_PROTOCOL
    assert client.welcome is not None and client.welcome["user"] == "alice"


async def test_no_token_is_closed_after_the_handshake_timeout(gateway):
    gw = await gateway(handshake_timeout=scaled(0.5))
    started = time.monotonic()
    client = await gw.connect(None, welcome=False)

    assert await client.closed(timeout=3) == CloseCode.AUTH_TIMEOUT
    assert time.monotonic() - started >= scaled(0.5)
    assert len(gw.node.hub) == 0


@pytest.mark.parametrize("via", ["header", "query", "message"])
async def test_garbage_token_fails(gw, via):
    client = await gw.connect("not.a.jwt", via=via, welcome=False)
    assert await client.closed() == CloseCode.AUTH_FAILED
    assert client.close_reason == "malformed token"
    assert gw.node.metrics.auth_failures == 1


@pytest.mark.parametrize("via", ["header", "message"])
async def test_badly_signed_token_fails(gw, via):
    token = mint_token(OTHER_SECRET, user="mallory")
    client = await gw.connect(token, via=via, welcome=False)
    assert await client.closed() == CloseCode.AUTH_FAILED
    assert client.close_reason == "invalid signature"
    assert gw.node.metrics.auth_failures == 1
    assert gw.node.metrics.connections_accepted == 0


@pytest.mark.parametrize("via", ["header", "message"])
async def test_expired_token_is_refused_at_the_door(gw, secret, via):
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, secret, algorithm="HS256")
    client = await gw.connect(token, via=via, welcome=False)
    assert await client.closed() == CloseCode.TOKEN_EXPIRED
    assert gw.node.metrics.connections_accepted == 0


async def test_first_message_other_than_auth_fails(gw):
    client = await gw.connect(None, welcome=False)
    await client.send({"op": "sub", "id": 1, "topic": "news"})
    assert await client.closed() == CloseCode.AUTH_FAILED
    assert client.close_reason == "authenticate first"
    assert gw.node.metrics.connections_accepted == 0


async def test_disallowed_origin_gets_403(gw, mint):
    with pytest.raises(InvalidStatus) as info:
        await connect(gw.url, mint(user="alice"), origin="https://evil.example")
    assert info.value.response.status_code == 403
    assert gw.node.metrics.connections_rejected == 1


async def test_allowed_origin_is_accepted(gateway, mint):
    gw = await gateway(allowed_origins=("https://app.example",))
    client = await gw.connect(mint(user="alice"), origin="https://app.example")
    assert client.welcome is not None and client.welcome["user"] == "alice"


async def test_unsupported_subprotocol_gets_400(gw, mint):
    with pytest.raises(InvalidStatus) as info:
        await connect(gw.url, mint(user="alice"), subprotocols=["chat.v2"])
    assert info.value.response.status_code == 400
    assert gw.node.metrics.connections_rejected == 1


async def test_token_expiring_on_a_live_connection_closes_it(gw, mint):
    # mint_token's exp is int(now) + 1: start early in a second so the token is
    # still valid when the connection authenticates, and expires while it is open.
    fraction = time.time() % 1
    if fraction > 0.6:
        await asyncio.sleep(1 - fraction)  # wall-clock alignment, not a timeout: not scaled
    client = await gw.connect(mint(user="alice", ttl=1))
    assert client.welcome is not None

    started = time.monotonic()
    assert await client.closed(timeout=3) == CloseCode.TOKEN_EXPIRED
    assert time.monotonic() - started < scaled(2.5)
    assert gw.node.metrics.token_expirations == 1
    assert await gw.node.connection_info(client.cid) is None


async def test_anonymous_access_when_configured(gateway):
    gw = await gateway(anonymous=True, jwt_secret=None)
    client = await gw.connect(None)
    assert client.welcome is not None
    assert client.welcome.get("user") is None

    # Anonymous defaults: subscribe to anything, publish nothing.
    await client.roundtrip({"op": "sub", "id": 1, "topic": "news.>"})
    await client.roundtrip(
        {"op": "pub", "id": 2, "topic": "news.x", "data": 1}, "error", code="permission_denied"
    )


async def test_anonymous_beside_jwt_keeps_token_users(gateway, mint):
    gw = await gateway(anonymous=True)
    anonymous = await gw.connect(None)
    alice = await gw.connect(mint(user="alice"))
    assert anonymous.welcome is not None and anonymous.welcome.get("user") is None
    assert alice.welcome is not None and alice.welcome["user"] == "alice"


async def test_no_anonymous_access_by_default(gateway):
    gw = await gateway(handshake_timeout=scaled(0.3))
    client = await gw.connect(None, welcome=False)
    assert await client.closed() == CloseCode.AUTH_TIMEOUT
    assert gw.node.metrics.connections_accepted == 0


@pytest.mark.parametrize("via", ["header", "message"])
async def test_messages_sent_before_the_welcome_are_handled_after_it(gw, mint, via):
    token = mint(user="alice", subscribe=["news"])
    client = await gw.connect(token, via=via, welcome=False)
    await client.send({"op": "sub", "id": 1, "topic": "news"})
    await client.send({"op": "ping", "id": 2})

    await client.expect("welcome", user="alice")
    # Answers are matched by id; their order is not part of the protocol.
    answers = [await client.recv(), await client.recv()]
    assert sorted((m["op"], m["id"]) for m in answers) == [("ok", 1), ("pong", 2)]


async def test_auth_for_another_user_is_refused(gw, mint):
    client = await gw.connect(mint(user="alice"), via="message")
    await client.send({"op": "auth", "id": 7, "token": mint(user="mallory")})
    await client.expect("error", id=7, code="permission_denied")
    info = await gw.node.connection_info(client.cid)
    assert info is not None and info.user == "alice"


async def test_token_refresh_extends_expiry_and_replaces_grants(gw, mint):
    client = await gw.connect(mint(user="alice", subscribe=["a.>", "b.>"], ttl=2), via="message")
    await client.roundtrip({"op": "sub", "id": 1, "topic": "a.x"})
    await client.roundtrip({"op": "sub", "id": 2, "topic": "b.x"})
    await client.send({"op": "auth", "id": 3, "token": mint(user="alice", subscribe=["a.>"])})
    ok = await client.expect("ok", id=3)
    assert ok["data"] == {"user": "alice", "subs": ["a.x"]}  # b.x is no longer granted
    # The old token's expiry no longer applies: still connected after it passes.
    await asyncio.sleep(scaled(3))
    await gw.node.publish("a.x", 1)
    await client.expect("msg", topic="a.x", data=1)
    await gw.node.publish("b.x", 2)
    await client.no_message()


async def test_bad_token_on_refresh_keeps_the_connection(gw, mint):
    client = await gw.connect(mint(user="alice"), via="message")
    await client.send({"op": "auth", "id": 5, "token": "garbage"})
    await client.expect("error", id=5, code="auth_failed")
    assert await gw.node.connection_info(client.cid) is not None


async def test_anonymous_connection_can_log_in_with_an_auth_message(gateway, mint):
    gw = await gateway(anonymous=True)
    client = await gw.connect(None, welcome=False)
    welcome = await client.expect("welcome")
    assert welcome.get("user") is None
    await client.send({"op": "auth", "id": 1, "token": mint(user="alice")})
    await client.expect("ok", id=1)
    assert await gw.node.send_to_user("alice", "hi") == 1
    await client.expect("push", data="hi")


async def test_connection_limit_gets_503(gateway, mint):
    gw = await gateway(max_connections=2)
    await gw.connect(mint(user="a"))
    await gw.connect(None, welcome=False)  # unauthenticated connections count too
    with pytest.raises(InvalidStatus) as info:
        await connect(gw.url, mint(user="c"))
    assert info.value.response.status_code == 503


async def test_wrong_path_gets_404(gw, mint):
    with pytest.raises(InvalidStatus) as info:
        await connect(gw.url.replace("/ws", "/other"), mint(user="alice"))
    assert info.value.response.status_code == 404


def _connect_many(host: str, port: int, count: int, timeout: float) -> int:
    """Open ``count`` TCP connections (kept open until all are made); how many succeeded."""
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                made.append(socket.create_connection((host, port), timeout=timeout))
            except OSError:
                break
        return len(made)
    finally:
        for sock in made:
            sock.close()


async def test_a_connection_storm_waits_in_the_backlog_instead_of_being_dropped(gw):
    # While the node's loop is busy (here: blocked), the kernel completes handshakes
    # into the listen backlog. asyncio's default of 100 would drop the SYNs beyond it
    # (clients retry a second later); the node's backlog queues the whole storm.
    storm = 600
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        connecting = pool.submit(_connect_many, gw.server.host, gw.server.port, storm, scaled(0.5))
        made = connecting.result(timeout=scaled(30))  # blocks the node's loop meanwhile
    assert made == storm
