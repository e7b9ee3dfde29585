"""Topics end to end: subscriptions (exact and wildcard), publications, grants and limits."""

from __future__ import annotations

from typing import Any

import pytest

from ._client import Client, eventually

END = "zz.end"
"""A sentinel topic: once it arrives, nothing published before it is still on its way."""

TOPICS = ["news", "news.tech", "news.tech.ai", "news.sport", "weather.tech"]


async def received_until_end(client: Client) -> list[tuple[str, Any]]:
    """(topic, data) of every ``msg`` before the sentinel publication."""
    seen = []
    while True:
        message = await client.expect("msg")
        if message["topic"] == END:
            return seen
        seen.append((message["topic"], message["data"]))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("news.tech", ["news.tech"]),
        ("news.*", ["news.tech", "news.sport"]),
        ("news.>", ["news.tech", "news.tech.ai", "news.sport"]),
        ("*.tech", ["news.tech", "weather.tech"]),
        ("*", ["news"]),
    ],
)
async def test_subscription_receives_matching_backend_and_client_publications(
    gw, mint, pattern, expected
):
    subscriber = await gw.connect(mint(user="bob", subscribe=[">"]))
    await subscriber.roundtrip({"op": "sub", "id": 1, "topic": pattern})
    await subscriber.roundtrip({"op": "sub", "id": 2, "topic": END})
    publisher = await gw.connect(mint(user="alice", publish=[">"]))

    for n, topic in enumerate(TOPICS):
        if n % 2:  # alternate: backend verb, client `pub` (acknowledged by id)
            await publisher.roundtrip({"op": "pub", "id": n, "topic": topic, "data": n})
        else:
            await gw.node.publish(topic, n)
    await gw.node.publish(END, None)

    assert await received_until_end(subscriber) == [(t, TOPICS.index(t)) for t in expected]
    await publisher.no_message()  # not subscribed: nothing comes back to the publisher


async def test_pub_without_grant_is_denied(gw, mint):
    subscriber = await gw.connect(mint(user="bob", subscribe=[">"], channels=[">"]))
    publisher = await gw.connect(mint(user="alice", publish=["chat.>"]))

    await publisher.roundtrip(
        {"op": "pub", "id": 5, "topic": "news.tech", "data": 1}, "error", code="permission_denied"
    )
    await publisher.roundtrip({"op": "pub", "id": 6, "topic": "chat.room", "data": 2})
    await subscriber.expect("msg", topic="chat.room", data=2)  # not news.tech first
    assert gw.node.metrics.publications == 1


async def test_sub_beyond_grants_is_denied(gw, mint):
    client = await gw.connect(mint(user="bob", subscribe=["news.*"]))
    for n, pattern in enumerate(["weather", "news.>", ">", "news.tech.ai"]):
        await client.roundtrip(
            {"op": "sub", "id": n, "topic": pattern}, "error", code="permission_denied"
        )
    await client.roundtrip({"op": "sub", "id": 10, "topic": "news.tech"})
    assert client.welcome is not None
    info = await gw.node.connection_info(client.cid)
    assert info is not None and info.subscriptions == ("news.tech",)


@pytest.mark.parametrize("pattern", ["news..tech", "news.te*", ".news", "news.>.x", "a b"])
async def test_invalid_pattern_is_refused(gw, mint, pattern):
    client = await gw.connect(mint(user="bob", subscribe=[">"], publish=[">"]))
    await client.roundtrip({"op": "sub", "id": 3, "topic": pattern}, "error", code="invalid_topic")
    assert gw.node.hub.patterns() == []


@pytest.mark.parametrize("topic", ["news.*", "news.>", "news..x"])
async def test_pub_to_invalid_topic_is_refused(gw, mint, topic):
    client = await gw.connect(mint(user="alice", publish=[">"]))
    await client.roundtrip(
        {"op": "pub", "id": 4, "topic": topic, "data": 1}, "error", code="invalid_topic"
    )
    assert gw.node.metrics.publications == 0


async def test_unsubscribe_stops_delivery(gw, mint):
    client = await gw.connect(mint(user="bob", subscribe=[">"], channels=[END]))
    await client.roundtrip({"op": "sub", "id": 1, "topic": "news.tech"})
    await gw.node.publish("news.tech", "before")
    await client.expect("msg", topic="news.tech", data="before")

    await client.roundtrip({"op": "unsub", "id": 2, "topic": "news.tech"})
    await gw.node.publish("news.tech", "after")
    await gw.node.publish(END, None)
    assert await received_until_end(client) == []
    await eventually(lambda: "news.tech" not in gw.node.hub.patterns(), what="hub unsubscribe")


async def test_overlapping_subscriptions_deliver_once(gw, mint):
    client = await gw.connect(mint(user="bob", subscribe=[">"], channels=[END]))
    for n, pattern in enumerate(["news.tech", "news.*", "news.>", "*.tech", ">"]):
        await client.roundtrip({"op": "sub", "id": n, "topic": pattern})
    await gw.node.publish("news.tech", "once")
    await gw.node.publish(END, None)
    assert await received_until_end(client) == [("news.tech", "once")]


async def test_subscription_cap(gateway, mint):
    gw = await gateway(max_subscriptions=2)
    client = await gw.connect(mint(user="bob", subscribe=[">"]))
    await client.roundtrip({"op": "sub", "id": 1, "topic": "a"})
    await client.roundtrip({"op": "sub", "id": 2, "topic": "b"})
    await client.roundtrip(
        {"op": "sub", "id": 3, "topic": "c"}, "error", code="too_many_subscriptions"
    )
    await client.roundtrip({"op": "sub", "id": 4, "topic": "a"})  # already held: not a new one
    await client.roundtrip({"op": "unsub", "id": 5, "topic": "a"})
    await client.roundtrip({"op": "sub", "id": 6, "topic": "c"})

    await gw.node.publish("c", "ok")
    await client.expect("msg", topic="c", data="ok")


async def test_unsub_of_something_not_subscribed(gw, mint):
    client = await gw.connect(mint(user="bob", subscribe=[">"]))
    await client.roundtrip({"op": "sub", "id": 1, "topic": "news.*"})
    # Unsubscribe takes exactly the pattern subscribed, not a topic it covers.
    for n, topic in enumerate(["news.tech", "weather"], start=2):
        await client.roundtrip(
            {"op": "unsub", "id": n, "topic": topic}, "error", code="not_subscribed"
        )
    await gw.node.publish("news.tech", 1)
    await client.expect("msg", topic="news.tech", data=1)


async def test_leaving_client_releases_its_subscriptions(gw, mint):
    token = mint(user="bob", subscribe=[">"], channels=["news.>"])
    leaving = await gw.connect(token)
    staying = await gw.connect(token)
    await leaving.roundtrip({"op": "sub", "id": 1, "topic": "weather"})
    await staying.roundtrip({"op": "sub", "id": 1, "topic": "sport"})
    assert sorted(gw.node.hub.patterns()) == ["news.>", "sport", "weather"]

    await leaving.close()
    await eventually(lambda: len(gw.node.hub) == 1, what="connection forgotten")
    assert sorted(gw.node.hub.patterns()) == ["news.>", "sport"]  # news.> is still wanted
    assert [i.id for i in await gw.node.presence("news.x")] == [staying.cid]
    await gw.node.publish("news.x", 1)
    await staying.expect("msg", topic="news.x", data=1)
