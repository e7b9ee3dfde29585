"""Names in Redis: channels, globs and their escaping (wsgate.broker.keys).

The property tests use a small reference of Redis glob matching (``*``,
``?``, ``\\x``), itself checked against a real Redis with ``KEYS``, which uses
the same matcher as PSUBSCRIBE (``stringmatchlen``).
"""

from __future__ import annotations

import re
import uuid

import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from contract._media import RedisServer
from wsgate.broker import keys
from wsgate.topics import matches, validate_pattern, validate_topic


def glob_regex(glob: str) -> re.Pattern[str]:
    """A regex matching what the Redis glob ``glob`` matches (no classes: we emit none)."""
    out: list[str] = []
    chars = iter(glob)
    for char in chars:
        if char == "\\":
            out.append(re.escape(next(chars)))
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            assert char not in "[]", f"unescaped {char!r} in {glob!r}"
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


def glob_matches(glob: str, name: str) -> bool:
    return glob_regex(glob).fullmatch(name) is not None


token = st.text(alphabet="ab?[]\\ü:-", min_size=1, max_size=4)
topics = st.lists(token, min_size=1, max_size=5).map(".".join)
prefixes = st.sampled_from(["wsgate", "app:ws", "odd[*?]\\prefix", "ü"])


@st.composite
def pattern_and_topic(draw: st.DrawFn) -> tuple[str, str]:
    """A topic and a pattern made from it (so that it often matches) or from another."""
    topic = draw(topics)
    source = draw(st.sampled_from([topic, draw(topics)])).split(".")
    pattern = [draw(st.sampled_from([t, "*"])) for t in source]
    if draw(st.booleans()):
        pattern[draw(st.integers(0, len(pattern) - 1)) :] = [">"]
    return ".".join(pattern), topic


def test_names() -> None:
    assert keys.topic_channel("wsgate", "orders.eu") == "wsgate:t:orders.eu"
    assert keys.pattern_glob("wsgate", "orders.*.created") == "wsgate:t:orders.*.created"
    assert keys.pattern_glob("wsgate", "orders.>") == "wsgate:t:orders.*"
    assert keys.pattern_glob("wsgate", ">") == "wsgate:t:*"
    assert keys.pattern_glob("w[1]", "a[b]?.\\.*") == "w\\[1\\]:t:a\\[b\\]\\?.\\\\.*"
    assert keys.broadcast_channel("wsgate") == "wsgate:broadcast"
    assert keys.node_inbox("wsgate", "n1") == "wsgate:n:n1"
    assert keys.topic_from_channel("wsgate", "wsgate:t:a.b") == "a.b"
    assert keys.topic_from_channel("wsgate", "wsgate:t:") is None
    assert keys.topic_from_channel("wsgate", "wsgate:broadcast") is None


@given(pattern_and_topic(), prefixes)
def test_the_glob_over_approximates_the_pattern(case: tuple[str, str], prefix: str) -> None:
    pattern, topic = case
    validate_pattern(pattern)
    validate_topic(topic)
    glob = keys.pattern_glob(prefix, pattern)
    if matches(pattern, topic):
        assert glob_matches(glob, keys.topic_channel(prefix, topic))
    # Never the other channels of the prefix.
    assert not glob_matches(glob, keys.broadcast_channel(prefix))
    assert not glob_matches(glob, keys.node_inbox(prefix, topic))


@given(topics, prefixes)
def test_channels_and_topics_round_trip(topic: str, prefix: str) -> None:
    assert keys.topic_from_channel(prefix, keys.topic_channel(prefix, topic)) == topic


@given(st.text(min_size=1, max_size=8))
def test_an_escaped_text_matches_only_itself(text: str) -> None:
    glob = keys.glob_escape(text)
    assert glob_matches(glob, text)
    assert not glob_matches(glob, text + "x")
    assert not glob_matches(glob, "x" + text[1:]) or text[0] == "x"


CASES = [
    ("a.*", "a.b"),
    ("a.*", "a.b.c"),
    ("g.[ab].*", "g.[ab].x"),
    ("g.[ab].*", "g.a.x"),
    ("q.a?c.>", "q.a?c.z"),
    ("q.a?c.>", "q.abc.z"),
    ("b.x\\y.*", "b.x\\y.1"),
    ("b.x\\y.*", "b.xy.1"),
    ("ü.*.ü", "ü.ß.ü"),
    ("*", "[x]"),
]


async def test_the_reference_agrees_with_redis(redis_server: RedisServer) -> None:
    prefix = f"keys-{uuid.uuid4().hex[:8]}[?]"
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        for _, topic in CASES:
            await client.set(keys.topic_channel(prefix, topic), 1, ex=60)
        for pattern, topic in CASES:
            glob = keys.pattern_glob(prefix, pattern)
            found = {_text(name) for name in await client.keys(glob)}
            channel = keys.topic_channel(prefix, topic)
            assert (channel in found) == glob_matches(glob, channel), (pattern, topic)
            if matches(pattern, topic):
                assert channel in found
    finally:
        await client.aclose()
