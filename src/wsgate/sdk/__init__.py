"""SDKs: the backend SDK (any process) and the client SDK (applications, devices)."""

from wsgate.sdk.backend import Backend, connect_backend
from wsgate.sdk.client import (
    Client,
    ClientState,
    Message,
    Subscription,
    SyncClient,
    SyncSubscription,
    connect,
    connect_sync,
)

__all__ = [
    "Backend",
    "Client",
    "ClientState",
    "Message",
    "Subscription",
    "SyncClient",
    "SyncSubscription",
    "connect",
    "connect_backend",
    "connect_sync",
]
