"""Checks shared by the Redis backends: the URL and the key prefix."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from wsgate.errors import ConfigError

__all__ = ["check_redis_target"]

_SCHEMES: Final = ("redis", "rediss", "unix")


def check_redis_target(url: str, prefix: str) -> str:
    """Validate a Redis URL and a key prefix.

    Returns:
        Where the server is, for logs (``host:port`` or the socket path), never
        the password.

    Raises:
        ConfigError: not a Redis URL, a malformed port, or an unusable prefix.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"not a Redis URL: scheme {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL: {exc}") from exc
    if not prefix or any(char.isspace() or not char.isprintable() for char in prefix):
        raise ConfigError(f"invalid broker prefix {prefix!r}")
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{port or 6379}"
