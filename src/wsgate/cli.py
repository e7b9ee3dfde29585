"""The ``wsgate`` command line: a thin front end over the public API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from wsgate import cli_commands
from wsgate.config import Config, load_config
from wsgate.errors import ConfigError, WsgateError

__all__ = ["main"]


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $WSGATE_CONFIG); WSGATE_* variables override it",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgate",
        description="A distributed WebSocket gateway and event bus. Run a node (serve), mint "
        "tokens (token), listen as a client (listen), or reach a running gateway's connections "
        "through its broker (publish, send, request, ...). 'wsgate COMMAND --help' for more.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run a gateway node",
        description="Run a gateway node. It prints 'listening on ws://HOST:PORT/PATH' when ready "
        "and stops gracefully on SIGTERM or SIGINT (clients are closed with 4001).",
    )
    _add_config_flag(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port to listen on (default 8765; 0 = any free port)"
    )
    serve.add_argument("--path", help="WebSocket path (default /ws)")
    serve.add_argument("--broker", help="broker URL (default memory://)")
    serve.add_argument("--node-id", help="node id (default: random)")
    serve.add_argument(
        "--anonymous",
        action="store_true",
        default=None,
        help="accept connections without a token (they may subscribe to anything, publish nothing)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN (repeatable; '*' allows any)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="enable the HTTP control API (/api/) and accept KEY there (repeatable; "
        "default: $WSGATE_API_KEYS, comma-separated)",
    )
    serve.add_argument(
        "--api-port", type=int, help="port of the HTTP control API (default 8766; 0 = any free)"
    )
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")

    token = commands.add_parser(
        "token",
        help="mint an HS256 token with the configured secret",
        description="Mint an HS256 JWT signed with WSGATE_JWT_SECRET (or auth.jwt_secret from "
        "--config). The token is the last line printed.",
    )
    _add_config_flag(token)
    token.add_argument("--user", required=True, help="user id (the 'sub' claim)")
    token.add_argument(
        "--sub",
        action="append",
        default=[],
        metavar="PATTERN",
        help="grant: may subscribe (repeatable)",
    )
    token.add_argument(
        "--pub",
        action="append",
        default=[],
        metavar="PATTERN",
        help="grant: may publish (repeatable)",
    )
    token.add_argument(
        "--call",
        action="append",
        default=[],
        metavar="PATTERN",
        help="grant: may call methods (repeatable)",
    )
    token.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="PATTERN",
        help="subscribe automatically on connect (must be granted by --sub)",
    )
    token.add_argument("--cid", metavar="ID", help="connection id the client takes (device serial)")
    token.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until expiry (default 3600)"
    )
    cli_commands.add_commands(commands)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "path": args.path,
        "broker": args.broker,
        "node_id": args.node_id,
        "anonymous": args.anonymous,
        "allowed_origins": tuple(args.allowed_origin) if args.allowed_origin else None,
        "log_level": args.log_level,
        "api_keys": tuple(args.api_key) if args.api_key else None,
        "api_port": args.api_port,
    }
    return load_config(args.config, overrides=overrides)


async def _serve(config: Config) -> None:
    from wsgate.node import Node  # noqa: PLC0415 - keep `wsgate token` light
    from wsgate.server import Server  # noqa: PLC0415

    node = Node(config)
    server = Server(node)
    await server.start()
    control = None
    if config.server.api_keys:
        from wsgate.server.control import ControlServer, control_app  # noqa: PLC0415

        control = ControlServer(
            control_app(node, config.server.api_keys), config.server.host, config.server.api_port
        )
        try:
            await control.start()
        except BaseException:
            await server.stop()
            raise
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"listening on {server.url}", flush=True)
    if control is not None:
        print(f"control API on {control.url}", flush=True)
    await stopping.wait()
    logging.getLogger("wsgate").info("shutting down")
    if control is not None:
        await control.stop()
    await server.stop()


def _run(coro: Any) -> Any:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsgate`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            config = _serve_config(args)
            _configure_logging(config.log_level)
            from wsgate.node import build_authenticator  # noqa: PLC0415

            build_authenticator(config)  # refuse to start with nobody able to connect
            _run(_serve(config))
            return 0
        if args.command == "token":
            from wsgate.auth import mint_token  # noqa: PLC0415

            config = load_config(args.config)
            secret = config.auth.jwt_secret
            if not secret:
                raise ConfigError("no secret: set WSGATE_JWT_SECRET or auth.jwt_secret in --config")
            print(
                mint_token(
                    secret,
                    user=args.user,
                    subscribe=args.sub,
                    publish=args.pub,
                    call=args.call,
                    channels=args.channel,
                    connection_id=args.cid,
                    ttl=args.ttl,
                )
            )
            return 0
        if args.command == "listen" or args.command in cli_commands.COMMANDS:
            return cli_commands.run(args, _run)
    except WsgateError as exc:
        print(f"wsgate: error: {exc}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
