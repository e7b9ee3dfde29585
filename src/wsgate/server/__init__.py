"""asyncio adapters that move bytes between sockets and the node."""

from wsgate.server.listener import Server

__all__ = ["Server"]
