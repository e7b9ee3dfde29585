"""Brokers join nodes into one gateway; backends are chosen by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from wsgate.broker.base import Broker, BrokerHandler
from wsgate.errors import ConfigError

__all__ = ["Broker", "BrokerHandler", "create_broker"]


def create_broker(url: str, *, prefix: str = "wsgate") -> Broker:
    """Build the broker a URL names, importing its backend only when asked for.

    Args:
        url: ``memory://`` (one process) or, once available, ``redis://...``.
        prefix: prefix of every key and channel the broker uses.

    Raises:
        ConfigError: unknown scheme.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from wsgate.broker.memory import MemoryBroker  # noqa: PLC0415 - lazy by design

        return MemoryBroker()
    raise ConfigError(f"unsupported broker URL scheme {scheme!r} (supported: memory://)")
