"""Plain HTTP beside the WebSocket path: ``/health`` and ``/metrics``."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from ._client import scaled


async def http(url: str, path: str, method: str = "GET") -> tuple[int, str]:
    """Status and body of one HTTP/1.1 request to the gateway at ``url``."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        async with asyncio.timeout(scaled(5)):
            head = await reader.readuntil(b"\r\n\r\n")
            headers = head.decode("latin-1").split("\r\n")
            length = next(
                (
                    int(h.split(":", 1)[1])
                    for h in headers
                    if h.lower().startswith("content-length")
                ),
                None,
            )
            body = await (reader.readexactly(length) if length is not None else reader.read())
    finally:
        writer.close()
        await writer.wait_closed()
    return int(headers[0].split()[1]), body.decode()


async def test_health(gw):
    assert await http(gw.url, "/health") == (200, "ok\n")


async def test_metrics_count_without_revealing_identities(gw, mint):
    client = await gw.connect(mint(user="alice-secret-name"))
    await client.roundtrip({"op": "ping", "id": 1}, "pong")
    status, body = await http(gw.url, "/metrics")
    assert status == 200
    labels = f'{{node="{gw.node.id}"}}'
    assert f"wsgate_connections_accepted_total{labels} 1" in body.splitlines()
    assert f"wsgate_messages_received_total{labels} 1" in body.splitlines()
    assert f"wsgate_connections{labels} 1" in body.splitlines()
    assert "alice" not in body and client.cid not in body


async def test_unknown_path(gw):
    assert (await http(gw.url, "/nope"))[0] == 404


async def test_health_reports_shutdown(gw):
    await gw.node.stop()  # the node is closing; the listener still answers
    assert (await http(gw.url, "/health"))[0] == 503
