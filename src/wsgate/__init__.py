"""wsgate: a distributed WebSocket gateway and event bus.

Embed a node::

    from wsgate import Node, Server, load_config

    node = Node(load_config())
    server = Server(node)
    await server.start()
    await node.publish("news.tech", {"title": "hello"})
"""

from wsgate.auth import (
    AnonymousAuthenticator,
    Authenticator,
    AuthRequest,
    ChainAuthenticator,
    Identity,
    JWTAuthenticator,
    OriginPolicy,
    mint_token,
)
from wsgate.config import Config, load_config
from wsgate.errors import (
    AuthError,
    BrokerError,
    ConfigError,
    ConnectionClosed,
    ConnectionLost,
    DeliveryError,
    InvalidState,
    InvalidTopic,
    NotConnected,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    TokenExpired,
    WsgateError,
)
from wsgate.hub import ConnectionInfo
from wsgate.node import CallContext, Node
from wsgate.protocol.codes import CloseCode, ErrorCode
from wsgate.sdk.backend import Backend, connect_backend
from wsgate.sdk.client import Client, ClientState, SyncClient, connect, connect_sync
from wsgate.server import Server

__version__ = "0.1.0"

__all__ = [
    "AnonymousAuthenticator",
    "AuthError",
    "AuthRequest",
    "Authenticator",
    "Backend",
    "BrokerError",
    "CallContext",
    "ChainAuthenticator",
    "Client",
    "ClientState",
    "CloseCode",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionInfo",
    "ConnectionLost",
    "DeliveryError",
    "ErrorCode",
    "Identity",
    "InvalidState",
    "InvalidTopic",
    "JWTAuthenticator",
    "Node",
    "NotConnected",
    "OriginPolicy",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "Server",
    "SyncClient",
    "TokenExpired",
    "WsgateError",
    "__version__",
    "connect",
    "connect_backend",
    "connect_sync",
    "load_config",
    "mint_token",
]
