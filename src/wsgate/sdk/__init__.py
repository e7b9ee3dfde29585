"""SDKs: the backend SDK (any process) and, later, the client SDK."""

from wsgate.sdk.backend import Backend, connect_backend

__all__ = ["Backend", "connect_backend"]
