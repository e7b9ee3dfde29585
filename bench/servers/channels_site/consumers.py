"""The WebSocket consumer at /ws/: ``{"sub": topic}`` joins the topic's group.

A publication arrives as a text frame whose content is exactly the payload string.
"""

from __future__ import annotations

import json
import re
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

_NOT_GROUP_CHAR = re.compile(r"[^a-zA-Z0-9\-_.]")
OK = json.dumps({"ok": True}, separators=(",", ":"))
NOT_OK = json.dumps({"ok": False}, separators=(",", ":"))


def group_of(topic: str) -> str:
    """The Channels group of a topic.

    Group names may hold only ASCII letters, digits, ``-``, ``_`` and ``.`` (shorter than
    100 characters), so ``bench.t`` is used as is; any other character becomes ``_``.
    """
    return _NOT_GROUP_CHAR.sub("_", topic)[:99]


class BenchConsumer(AsyncWebsocketConsumer):
    """Subscribes on ``{"sub": topic}`` and forwards ``bench.msg`` events as text frames."""

    async def connect(self) -> None:
        self.joined: set[str] = set()
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            topic = json.loads(text_data or bytes_data or b"").get("sub")
        except (ValueError, AttributeError):
            topic = None
        if not isinstance(topic, str) or not topic:
            await self.send(text_data=NOT_OK)
            return
        group = group_of(topic)
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.add(group)
        await self.send(text_data=OK)

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def bench_msg(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class NoDatabaseBenchConsumer(BenchConsumer):
    """BenchConsumer without the per-message ``close_old_connections`` thread hop.

    Channels 4.3's ``AsyncConsumer.dispatch`` runs ``close_old_connections`` through
    ``sync_to_async`` before every handler call, one trip to a worker thread per message,
    to recycle Django database connections. This site has no database, so the trip does
    nothing but cost; a consumer that touches no database can skip it, as this one does.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
