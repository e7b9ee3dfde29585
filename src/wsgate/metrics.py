"""Counters and gauges of one node, rendered in the Prometheus text format.

Counters are plain integer attributes: the hot path adds to them without a
lock, a label lookup or a function call. ``GET /metrics`` on the node renders
them (see docs/operations.md for the list).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Metrics"]

_HELP: dict[str, str] = {
    "connections_accepted": "WebSocket connections that completed authentication",
    "connections_rejected": "Connections refused at the door (origin, limit, protocol, auth)",
    "auth_failures": "Failed authentications (bad, missing or expired token)",
    "takeovers": "Connections closed because a newer one claimed the same id",
    "messages_received": "Messages received from clients",
    "messages_delivered": "Messages queued to clients (each fan-out delivery counts)",
    "frames_written": "WebSocket frames written to clients (packed frames count once)",
    "publications": "Publications accepted by this node (backend and client)",
    "protocol_errors": "Connections closed for malformed input",
    "bad_requests": "Messages answered with bad_request or unknown_op",
    "oversized_messages": "Connections closed for an oversized message",
    "rate_limited": "Connections closed for exceeding the message rate",
    "slow_consumers": "Connections closed because their outbound queue overflowed",
    "keepalive_timeouts": "Connections closed because the peer stopped answering pings",
    "token_expirations": "Connections closed because their token expired",
    "dropped_closed": "Messages not queued because their connection was already closing",
    "requests_sent": "Server requests sent to clients",
    "request_timeouts": "Server requests that timed out",
    "late_replies": "Replies dropped because their request had ended or belonged elsewhere",
    "calls": "Client calls received",
    "call_errors": "Client calls answered with an error",
    "encode_errors": "Payloads that could not be encoded for a client's encoding",
    "broker_errors": "Publications, broadcasts and direct messages the broker failed to take",
}


class Metrics:
    """Every counter of a node; gauges come from callables given at construction."""

    def __init__(self, gauges: dict[str, Callable[[], float]] | None = None) -> None:
        for name in _HELP:
            setattr(self, name, 0)
        self._gauges = dict(gauges or {})

    connections_accepted: int
    connections_rejected: int
    auth_failures: int
    takeovers: int
    messages_received: int
    messages_delivered: int
    frames_written: int
    publications: int
    protocol_errors: int
    bad_requests: int
    oversized_messages: int
    rate_limited: int
    slow_consumers: int
    keepalive_timeouts: int
    token_expirations: int
    dropped_closed: int
    requests_sent: int
    request_timeouts: int
    late_replies: int
    calls: int
    call_errors: int
    encode_errors: int
    broker_errors: int

    def add_gauge(self, name: str, read: Callable[[], float]) -> None:
        """Expose a value read at render time (connections, subscriptions, ...)."""
        self._gauges[name] = read

    def snapshot(self) -> dict[str, float]:
        """Every counter and gauge by name."""
        values: dict[str, float] = {name: getattr(self, name) for name in _HELP}
        values.update({name: read() for name, read in self._gauges.items()})
        return values

    def render(self, labels: str = "") -> str:
        """The Prometheus text exposition of every metric (``wsgate_`` prefixed)."""
        lines: list[str] = []
        for name, text in _HELP.items():
            lines.append(f"# HELP wsgate_{name}_total {text}")
            lines.append(f"# TYPE wsgate_{name}_total counter")
            lines.append(f"wsgate_{name}_total{labels} {getattr(self, name)}")
        for name, read in self._gauges.items():
            lines.append(f"# TYPE wsgate_{name} gauge")
            lines.append(f"wsgate_{name}{labels} {read()}")
        return "\n".join(lines) + "\n"
