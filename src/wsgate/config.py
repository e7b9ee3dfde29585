"""Configuration: one frozen tree holding every default once.

Sources, later ones winning: built-in defaults < TOML file (``--config``) <
``WSGATE_*`` environment variables < command-line flags.

Every field has a unique name across the tree; its environment variable is
``WSGATE_`` + the name in upper case (``limits.max_message_size`` ->
``WSGATE_MAX_MESSAGE_SIZE``), and its TOML key is the name inside its section
(``[limits] max_message_size = 65536``). Lists in environment variables are
comma-separated. docs/configuration.md lists them all (a test keeps it complete).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from wsgate.errors import ConfigError

__all__ = [
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "KeepaliveConfig",
    "LimitsConfig",
    "ServerConfig",
    "env_names",
    "load_config",
]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how the node listens."""

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` for every interface)."""
    port: int = 8765
    """Port to listen on (0 picks a free one; the ``listening on`` line tells which)."""
    path: str = "/ws"
    """URL path of the WebSocket endpoint (``/health`` and ``/metrics`` sit beside it)."""
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed besides same-origin requests (``*`` allows any)."""
    max_connections: int = 10_000
    """Connections held at once; further upgrades get HTTP 503."""
    handshake_timeout: float = 10.0
    """Seconds from TCP accept to a successful ``auth`` (upgrade included)."""
    shutdown_timeout: float = 5.0
    """Seconds a graceful shutdown waits for clients to take their close frames."""
    pack_messages: bool = True
    """Pack messages queued in the same event-loop tick into one frame (an array)."""
    flush_interval: float = 0.005
    """Seconds: under a stream of publications, each connection is written at most this often."""
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """Keys of the HTTP control API (``/api/``); it is off while there are none."""
    api_port: int = 8766
    """Port of the HTTP control API, on ``host`` (0 picks a free one)."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-connection limits; each breach has a documented close code or error."""

    max_message_size: int = 65_536
    """Largest inbound message in bytes (close 1009 beyond)."""
    rate_limit: float = 100.0
    """Sustained inbound messages per second per connection (close 4004 beyond)."""
    rate_burst: int = 200
    """Inbound messages a connection may send at once before the rate applies."""
    max_subscriptions: int = 128
    """Subscriptions per connection (error ``too_many_subscriptions`` beyond)."""
    max_queue_bytes: int = 4 * 1024 * 1024
    """Outbound bytes queued for one connection before it counts as a slow consumer."""
    max_inflight_calls: int = 64
    """Client ``call``s awaiting an answer per connection."""
    call_timeout: float = 10.0
    """Default and maximum seconds a client ``call`` waits for its handler."""
    request_timeout: float = 10.0
    """Default seconds a backend ``request`` waits for the client's reply."""


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """WebSocket keepalive: a ping after ``ping_interval`` idle seconds."""

    ping_interval: float = 25.0
    """Idle seconds before the server pings a connection."""
    pong_timeout: float = 20.0
    """Seconds to wait for any inbound frame after a ping before closing (4002)."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may connect. With nothing set, the node refuses to start."""

    jwt_secret: str | None = field(default=None, repr=False)
    """HS256 secret shared with ``wsgate token`` (at least 32 bytes)."""
    jwt_public_key: str | None = field(default=None, repr=False)
    """PEM public key (or ``@path`` to a PEM file) for RS256/ES256 tokens."""
    jwt_algorithms: tuple[str, ...] = ()
    """Accepted algorithms; default HS256 with a secret, RS256+ES256 with a key."""
    jwt_audience: str | None = None
    """Required ``aud`` claim, when set (tokens with an ``aud`` are refused otherwise)."""
    jwt_issuer: str | None = None
    """Required ``iss`` claim, when set."""
    anonymous: bool = False
    """Accept connections without a token (and token-less ones beside JWT)."""
    anonymous_subscribe: tuple[str, ...] = (">",)
    """Patterns anonymous connections may subscribe to."""
    anonymous_publish: tuple[str, ...] = ()
    """Topics anonymous connections may publish to (none by default)."""
    anonymous_call: tuple[str, ...] = ()
    """Methods anonymous connections may call (none by default)."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """How nodes reach each other."""

    broker: str = "memory://"
    """Broker URL: ``memory://`` (one node) or ``redis://host:port/db``."""
    prefix: str = "wsgate"
    """Prefix of every key and channel the node uses in the broker."""
    presence_lease: float = 15.0
    """Seconds a node's presence entries outlive its last heartbeat (heartbeat: a third)."""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of a node."""

    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Id of this node in the cluster (random by default; must be unique)."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR (logs go to standard error)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "keepalive": KeepaliveConfig,
    "auth": AuthConfig,
    "broker": BrokerConfig,
}
_TOP_LEVEL = ("node_id", "log_level")


def _field_index() -> dict[str, tuple[str | None, type[Any]]]:
    """Map every field name to (section or None, its type)."""
    index: dict[str, tuple[str | None, type[Any]]] = {}
    top_hints = get_type_hints(Config)
    for name in _TOP_LEVEL:
        index[name] = (None, top_hints[name])
    for section, cls in _SECTIONS.items():
        for name, hint in get_type_hints(cls).items():
            if name in index:  # pragma: no cover - guarded by a unit test
                raise AssertionError(f"config field {name!r} is not unique")
            index[name] = (section, hint)
    return index


_FIELDS = _field_index()


def env_names() -> dict[str, str]:
    """Every environment variable the configuration reads, mapped to its field path."""
    return {
        f"WSGATE_{name.upper()}": (f"{section}.{name}" if section else name)
        for name, (section, _) in _FIELDS.items()
    }


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Convert a TOML/env/flag value to the field's type, or raise ConfigError."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(name, args[0], value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if hint is int and not isinstance(value, bool):
            return int(value)
        if hint is float and not isinstance(value, bool):
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if origin is tuple:
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list | tuple):
                items = [str(v) for v in value]
            else:
                raise ValueError(value)
            return tuple(items)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {value!r}") from exc
    raise ConfigError(f"invalid value for {name}: {value!r}")


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, the environment and flags.

    Args:
        path: a TOML file; ``None`` reads ``WSGATE_CONFIG`` from the environment, if set.
        env: the environment (defaults to ``os.environ``).
        overrides: field name -> value (command-line flags); ``None`` values are ignored.

    Returns:
        The frozen, validated configuration.

    Raises:
        ConfigError: unknown keys, wrong types, or values out of range.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path if path is not None else env.get("WSGATE_CONFIG") or None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        for key, value in data.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] must be a table")
                for sub, sub_value in value.items():
                    if _FIELDS.get(sub, (None, None))[0] != key:
                        raise ConfigError(f"unknown config key [{key}] {sub}")
                    values[sub] = sub_value
            elif key in _TOP_LEVEL:
                values[key] = value
            else:
                raise ConfigError(f"unknown config key {key!r}")
    for name in _FIELDS:
        env_value = env.get(f"WSGATE_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown config field {name!r}")
        if value is not None:
            values[name] = value

    sections: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    top: dict[str, Any] = {}
    for name, value in values.items():
        section, hint = _FIELDS[name]
        coerced = _coerce(name, hint, value)
        (sections[section] if section else top)[name] = coerced
    config = Config(
        **top,
        **{s: _SECTIONS[s](**kw) for s, kw in sections.items()},
    )
    _validate(config)
    return config


def _validate(config: Config) -> None:
    """Reject values no node can run with."""
    positive = {
        "port": (config.server.port, 0),
        "max_connections": (config.server.max_connections, 1),
        "max_message_size": (config.limits.max_message_size, 64),
        "rate_burst": (config.limits.rate_burst, 1),
        "max_subscriptions": (config.limits.max_subscriptions, 0),
        "max_queue_bytes": (config.limits.max_queue_bytes, 1024),
        "max_inflight_calls": (config.limits.max_inflight_calls, 1),
    }
    for name, (value, minimum) in positive.items():
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if not 0 <= config.server.flush_interval <= 1:
        raise ConfigError(
            f"flush_interval must be between 0 and 1 second, got {config.server.flush_interval}"
        )
    if config.server.port > 65535:
        raise ConfigError("port must be at most 65535")
    for name, seconds in (
        ("handshake_timeout", config.server.handshake_timeout),
        ("rate_limit", config.limits.rate_limit),
        ("call_timeout", config.limits.call_timeout),
        ("request_timeout", config.limits.request_timeout),
        ("ping_interval", config.keepalive.ping_interval),
        ("pong_timeout", config.keepalive.pong_timeout),
        ("presence_lease", config.broker.presence_lease),
    ):
        if seconds <= 0:
            raise ConfigError(f"{name} must be positive, got {seconds}")
    if not config.server.path.startswith("/"):
        raise ConfigError("path must start with '/'")


def replace(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with fields (by their unique names) changed; for tests and embedding."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown config field {name!r}")
        section, _ = _FIELDS[name]
        (sections.setdefault(section, {}) if section else top)[name] = value
    new = dataclasses.replace(
        config,
        **top,
        **{s: dataclasses.replace(getattr(config, s), **kw) for s, kw in sections.items()},
    )
    _validate(new)
    return new
