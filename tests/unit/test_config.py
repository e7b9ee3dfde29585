"""Configuration: defaults, precedence, coercion and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config import Config, env_names, load_config, replace
from wsgate.errors import ConfigError


def test_defaults_are_safe() -> None:
    config = load_config(env={})
    assert config.server.host == "127.0.0.1"
    assert config.auth.anonymous is False
    assert config.auth.jwt_secret is None
    assert config.broker.broker == "memory://"
    assert config.limits.max_message_size == 65_536
    assert 0 < config.keepalive.ping_interval < 60


def test_every_field_has_a_unique_env_name() -> None:
    names = env_names()
    assert names["WSGATE_JWT_SECRET"] == "auth.jwt_secret"
    assert names["WSGATE_MAX_MESSAGE_SIZE"] == "limits.max_message_size"
    assert names["WSGATE_BROKER"] == "broker.broker"
    assert len(set(names.values())) == len(names)


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "wsgate.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[limits]\nrate_limit = 5\n')
    config = load_config(path, env={"WSGATE_PORT": "9001"}, overrides={"host": "::1", "port": None})
    assert (config.server.port, config.server.host, config.limits.rate_limit) == (9001, "::1", 5.0)


def test_env_values_are_coerced() -> None:
    config = load_config(
        env={
            "WSGATE_ANONYMOUS": "yes",
            "WSGATE_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "WSGATE_PING_INTERVAL": "2.5",
            "WSGATE_JWT_AUDIENCE": "",
        }
    )
    assert config.auth.anonymous is True
    assert config.server.allowed_origins == ("https://a.example", "https://b.example")
    assert config.keepalive.ping_interval == 2.5
    assert config.auth.jwt_audience is None


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('node_id = "n1"\n[auth]\njwt_secret = "s"\n')
    config = load_config(env={"WSGATE_CONFIG": str(path)})
    assert (config.node_id, config.auth.jwt_secret) == ("n1", "s")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nnope = 1\n", "unknown config key"),
        ("[limits]\nport = 1\n", "unknown config key"),
        ("bogus = 1\n", "unknown config key"),
        ("server = 1\n", "must be a table"),
        ("[server]\nport = 'x'\n", "invalid value for port"),
        ("[server]\nport = 70000\n", "at most 65535"),
        ("[limits]\nrate_limit = 0\n", "must be positive"),
        ("[server]\npath = 'ws'\n", "must start with"),
        ("[auth]\nanonymous = 'maybe'\n", "invalid value for anonymous"),
        ("[server\n", "cannot read config file"),
    ],
)
def test_invalid_configuration_is_refused(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_secrets_are_not_in_repr() -> None:
    config = load_config(env={"WSGATE_JWT_SECRET": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(config)


def test_replace_changes_fields_by_name() -> None:
    config = replace(Config(), port=0, anonymous=True, node_id="x")
    assert (config.server.port, config.auth.anonymous, config.node_id) == (0, True, "x")
    with pytest.raises(ConfigError):
        replace(config, nope=1)
