"""Graceful shutdown: clients get 4001, pending requests fail fast, the port closes."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from wsgate import CloseCode, ConnectionLost

from ._client import connect, scaled


async def test_sigterm_closes_clients_with_4001_and_exits_0(wsgate_serve):
    async with wsgate_serve("--anonymous") as served:
        client = await connect(served.url)
        try:
            assert client.welcome is not None and client.welcome.get("user") is None
            served.proc.send_signal(signal.SIGTERM)
            assert await client.closed(timeout=5) == CloseCode.SHUTDOWN
        finally:
            await client.close()
        returncode = await asyncio.to_thread(served.proc.wait, scaled(5))
        assert returncode == 0, served.stderr()
        assert "shutting down" in served.stderr()


async def test_server_stop_fails_in_flight_requests_and_stops_accepting(gw, mint):
    token = mint(user="alice")
    client = await gw.connect(token)
    request = asyncio.create_task(gw.node.request(client.cid, "pending", timeout=scaled(30)))
    await client.expect("req", data="pending")

    started = time.monotonic()
    stop = asyncio.create_task(gw.server.stop())
    with pytest.raises(ConnectionLost):  # not RequestTimeout: it does not wait 30 s
        await request
    assert await client.closed() == CloseCode.SHUTDOWN
    await stop
    assert time.monotonic() - started < scaled(3)

    with pytest.raises(OSError):
        await connect(gw.url, token)


async def test_server_stop_closes_unauthenticated_connections_too(gw):
    waiting = await gw.connect(None, welcome=False)  # has not sent its token yet
    await gw.server.stop()
    assert await waiting.closed() == CloseCode.SHUTDOWN
    assert not gw.server.connections
