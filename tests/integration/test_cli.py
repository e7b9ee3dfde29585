"""The ``wsgate`` command line, run as subprocesses."""

from __future__ import annotations

import time

import jwt

from wsgate import CloseCode

from ._client import connect


def test_serve_without_any_authentication_refuses_to_start(wsgate_run):
    result = wsgate_run("serve", "--port", "0")
    assert result.returncode != 0
    assert "listening on" not in result.stdout
    assert "no authentication configured" in result.stderr
    assert "WSGATE_JWT_SECRET" in result.stderr and "--anonymous" in result.stderr


def test_token_without_a_secret_fails(wsgate_run):
    result = wsgate_run("token", "--user", "alice")
    assert result.returncode != 0
    assert "WSGATE_JWT_SECRET" in result.stderr
    assert result.stdout == ""


async def test_minted_token_is_accepted_by_serve(wsgate_run, wsgate_serve, secret):
    env = {"WSGATE_JWT_SECRET": secret}
    result = wsgate_run(
        "token", "--user", "U", "--sub", "news.>", "--ttl", "120", "--channel", "news.>", env=env
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["sub"] == "U"
    assert 110 <= claims["exp"] - time.time() <= 121

    async with wsgate_serve(env=env) as served:
        client = await connect(served.url, token)
        try:
            assert client.welcome is not None
            assert client.welcome["user"] == "U"
            assert client.welcome["subs"] == ["news.>"]
            await client.roundtrip({"op": "sub", "id": 1, "topic": "news.tech"})
            await client.roundtrip(
                {"op": "sub", "id": 2, "topic": "weather"}, "error", code="permission_denied"
            )
        finally:
            await client.close()

        # The same command with another secret mints a token this server refuses.
        other = wsgate_run("token", "--user", "U", env={"WSGATE_JWT_SECRET": secret[::-1]})
        assert other.returncode == 0, other.stderr
        stranger = await connect(served.url, other.stdout.strip().splitlines()[-1], welcome=False)
        try:
            assert await stranger.closed() == CloseCode.AUTH_FAILED
        finally:
            await stranger.close()
