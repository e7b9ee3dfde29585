"""The ASGI application: WebSocket ``/ws/`` to the consumer, any HTTP request gets 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from .consumers import BenchConsumer, NoDatabaseBenchConsumer

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def not_found(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Plain 404 for HTTP: the peer serves only its WebSocket."""
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def build_application(stock_dispatch: bool = False) -> Any:
    """The ProtocolTypeRouter; call after ``settings.configure_django``.

    ``stock_dispatch`` keeps Channels' own ``dispatch`` (a ``close_old_connections``
    thread hop per message) instead of ``NoDatabaseBenchConsumer``'s.
    """
    consumer = BenchConsumer if stock_dispatch else NoDatabaseBenchConsumer
    return ProtocolTypeRouter(
        {
            "http": not_found,
            # No AllowedHostsOriginValidator: the load generator is not a browser.
            "websocket": URLRouter([path("ws/", consumer.as_asgi())]),
        }
    )
