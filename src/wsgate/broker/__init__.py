"""Brokers join nodes into one gateway; backends are chosen by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from wsgate.broker.base import Broker, BrokerHandler, Presence, Registration
from wsgate.errors import ConfigError

__all__ = [
    "Broker",
    "BrokerHandler",
    "Presence",
    "Registration",
    "create_broker",
    "create_presence",
]


def create_broker(url: str, *, prefix: str = "wsgate") -> Broker:
    """Build the broker a URL names, importing its backend only when asked for.

    Args:
        url: ``memory://`` (one process), ``redis://[user:password@]host[:port][/db]``
            or ``rediss://...`` (Redis over TLS; needs the ``wsgate[redis]`` extra).
        prefix: prefix of every key and channel the broker uses.

    Raises:
        ConfigError: unknown scheme, a malformed URL, or a missing optional dependency.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from wsgate.broker.memory import MemoryBroker  # noqa: PLC0415 - lazy by design

        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        try:
            from wsgate.broker.redis import RedisBroker  # noqa: PLC0415 - lazy by design
        except ImportError as exc:
            raise ConfigError(
                f"the {scheme}:// broker needs redis-py: pip install 'wsgate[redis]' ({exc})"
            ) from exc
        return RedisBroker(url, prefix=prefix)
    raise ConfigError(
        f"unsupported broker URL scheme {scheme!r} (supported: memory://, redis://, rediss://)"
    )


def create_presence(url: str, *, prefix: str = "wsgate", lease: float = 15.0) -> Presence:
    """Build the presence backend a URL names (the same URL as the broker's).

    Args:
        url: as for :func:`create_broker`.
        prefix: prefix of every key the presence backend writes.
        lease: seconds a node's entries outlive its last heartbeat.

    Raises:
        ConfigError: unknown scheme, a malformed URL, or a missing optional dependency.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from wsgate.broker.memory import MemoryPresence  # noqa: PLC0415 - lazy by design

        return MemoryPresence()
    if scheme in ("redis", "rediss"):
        try:
            from wsgate.broker.redis_presence import RedisPresence  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigError(
                f"the {scheme}:// presence needs redis-py: pip install 'wsgate[redis]' ({exc})"
            ) from exc
        return RedisPresence(url, prefix=prefix, lease=lease)
    raise ConfigError(
        f"unsupported broker URL scheme {scheme!r} (supported: memory://, redis://, rediss://)"
    )
