"""The hub's bookkeeping: takeover with compare-and-delete, users, topic refcounts."""

from __future__ import annotations

from wsgate.auth import Identity
from wsgate.hub import Hub
from wsgate.protocol.codec import JSON


class FakeConnection:
    """The smallest ClientConnection: records what it is sent."""

    def __init__(self, cid: str, user: str | None = "u") -> None:
        self.id = cid
        self.identity = Identity(user=user)
        self.codec = JSON
        self.subscriptions: set[str] = set()
        self.pending_requests: set[int] = set()
        self.inflight_calls = 0
        self.connected_at = 0.0
        self.remote_address = None
        self.sent: list[bytes] = []
        self.closed: int | None = None

    @property
    def user(self) -> str | None:
        return self.identity.user

    def deliver(self, payload: bytes) -> None:
        self.sent.append(payload)

    deliver_fanout = deliver

    def close(self, code: int, reason: str = "") -> None:
        self.closed = code


def test_takeover_returns_the_old_connection_and_cleanup_spares_the_new() -> None:
    hub = Hub("n1")
    old, new = FakeConnection("dev-1"), FakeConnection("dev-1")
    assert hub.add(old) is None
    hub.subscribe(old, "a.>")
    assert hub.add(new) is old
    hub.subscribe(new, "a.>")
    hub.remove(old)  # the old connection's late cleanup
    assert hub.get("dev-1") is new
    assert hub.of_user("u") == (new,)
    assert hub.subscribers("a.b") == (new,)


def test_adding_the_same_connection_twice_is_not_a_takeover() -> None:
    hub = Hub("n1")
    conn = FakeConnection("c")
    hub.add(conn)
    assert hub.add(conn) is None


def test_first_and_last_subscriber_of_a_pattern_are_reported() -> None:
    hub = Hub("n1")
    a, b = FakeConnection("a"), FakeConnection("b")
    hub.add(a)
    hub.add(b)
    assert hub.subscribe(a, "x.*") is True
    assert hub.subscribe(b, "x.*") is False
    assert hub.unsubscribe(a, "x.*") is False
    assert hub.remove(b) == ["x.*"]
    assert hub.patterns() == []


def test_users_and_info() -> None:
    hub = Hub("n1")
    a, b, anon = FakeConnection("a", "ann"), FakeConnection("b", "ann"), FakeConnection("c", None)
    for conn in (a, b, anon):
        hub.add(conn)
    hub.subscribe(a, "t")
    assert set(hub.of_user("ann")) == {a, b}
    assert hub.users() == 1
    info = hub.info(a)
    assert (info.id, info.node, info.user, info.subscriptions, info.encoding) == (
        "a",
        "n1",
        "ann",
        ("t",),
        "json",
    )
    hub.remove(a)
    hub.remove(b)
    assert hub.of_user("ann") == ()
    assert len(hub) == 1


def test_server_assigned_connection_ids_are_command_line_safe() -> None:
    from wsgate import Node  # noqa: PLC0415 - a node without a server, for its id factory
    from wsgate.config import Config, replace  # noqa: PLC0415

    node = Node(replace(Config(), anonymous=True))
    ids = {node.new_connection_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(cid.isalnum() and cid.isascii() and len(cid) >= 16 for cid in ids)
