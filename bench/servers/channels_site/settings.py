"""Minimal Django settings, configured in code: no database, no apps, one channel layer.

Channel layers (see the module docstring of bench/servers/channels_app.py for why):

- no Redis: ``channels.layers.InMemoryChannelLayer`` (one process);
- ``--redis URL``: ``channels_redis.pubsub.RedisPubSubChannelLayer`` by default, or
  ``channels_redis.core.RedisChannelLayer`` with ``--layer core``.

Limits raised so 1,000 subscribers x 1,000 messages are not dropped by the layer itself:

- ``capacity`` (InMemory and RedisChannelLayer; default 100 messages per channel). The
  in-memory layer silently skips a full channel in ``group_send``; RedisChannelLayer skips
  a full Redis key in its ``group_send`` Lua script (all consumers of one process share one
  key, so 100 group messages queued for a node at once is the default limit) and its
  per-consumer receive buffer drops the oldest message once it holds ``capacity``.
- ``expiry`` (default 60 s): a message still queued after ``expiry`` is dropped, and the
  in-memory layer also removes that channel from every group. A 1,000 x 1,000 burst can
  take longer than 60 s to drain, so it is raised to an hour.
- ``group_expiry`` (default 1 day) is left alone: no run lasts that long.

RedisPubSubChannelLayer has no capacity or expiry: it keeps an unbounded asyncio queue per
consumer, and Redis pub/sub is at most once, so what it can lose is what Redis drops when a
subscriber connection exceeds ``client-output-buffer-limit pubsub`` (32 MB hard, or 8 MB
for 60 s, by default): Redis then closes that connection.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

# Per-channel queue length: far above 1,000 messages, still bounded so a dead consumer
# cannot grow memory forever.
CAPACITY = 100_000
# Seconds a queued message may wait before the layer drops it.
EXPIRY = 3600

LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}


def channel_layer_config(redis_url: str | None, layer: str = "pubsub") -> dict[str, Any]:
    """The CHANNEL_LAYERS["default"] entry for this run."""
    if not redis_url:
        return {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": CAPACITY, "expiry": EXPIRY},
        }
    if layer == "pubsub":
        return {"BACKEND": LAYERS["pubsub"], "CONFIG": {"hosts": [redis_url]}}
    return {
        "BACKEND": LAYERS["core"],
        "CONFIG": {"hosts": [redis_url], "capacity": CAPACITY, "expiry": EXPIRY},
    }


def configure_django(redis_url: str | None, layer: str = "pubsub") -> None:
    """Configure Django in code and set it up; call once, before importing consumers."""
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-secret",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,  # keep the process's own stderr logging
        CHANNEL_LAYERS={"default": channel_layer_config(redis_url, layer)},
    )
    django.setup()
