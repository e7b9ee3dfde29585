"""Tests of wsgate.topics: validation, matching, coverage and the subscription trie."""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from wsgate.errors import InvalidTopic
from wsgate.topics import (
    MAX_TOKENS,
    MAX_TOPIC_LENGTH,
    TopicTrie,
    covers,
    is_pattern,
    matches,
    validate_pattern,
    validate_topic,
)

# ------------------------------------------------------------------ reference models


@functools.cache
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\.".join(parts))


def ref_matches(pattern: str, topic: str) -> bool:
    """Reference matcher: the pattern translated to a regular expression."""
    return _pattern_regex(pattern).fullmatch(topic) is not None


def ref_valid(s: object, *, pattern: bool) -> bool:
    """Reference validator: the rules of the module docstring, written out plainly."""
    if not isinstance(s, str) or not s or len(s) > MAX_TOPIC_LENGTH:
        return False
    tokens = s.split(".")
    if len(tokens) > MAX_TOKENS:
        return False
    for i, token in enumerate(tokens):
        if pattern and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if not token:
            return False
        for char in token:
            if char in "*>" or char.isspace() or unicodedata.category(char) in ("Cc", "Cs"):
                return False
    return True


@functools.cache
def _enumerate_topics(alphabet: tuple[str, ...], max_len: int) -> tuple[str, ...]:
    return tuple(
        ".".join(tokens)
        for n in range(1, max_len + 1)
        for tokens in itertools.product(alphabet, repeat=n)
    )


def brute_force_covers(grant: str, pattern: str) -> bool:
    """Whether every topic matching ``pattern`` matches ``grant``, by enumeration.

    Exact for patterns far below the length limits. Tokens not occurring as literals in
    either pattern are interchangeable (wildcards accept all, literals refuse all), so
    one extra token ``z`` stands for all of them. A counterexample longer than
    ``max(len) + 1`` tokens can be shortened: the pattern's topics that long end in its
    ``>``, which still matches after dropping a token beyond ``max(len)``, and the
    grant's answer does not change either (its ``>`` absorbs the dropped token, or
    without ``>`` it refuses every topic longer than itself).
    """
    gtokens = grant.split(".")
    ptokens = pattern.split(".")
    literals = {t for t in gtokens + ptokens if t not in ("*", ">")}
    alphabet = (*sorted(literals), "z")
    assert "z" not in literals
    max_len = max(len(gtokens), len(ptokens)) + 1
    return all(
        ref_matches(grant, topic)
        for topic in _enumerate_topics(alphabet, max_len)
        if ref_matches(pattern, topic)
    )


# ------------------------------------------------------------------------ strategies

ALPHABET = ("a", "b", "c")
VALUES = st.integers(min_value=0, max_value=5)


def _all_small_patterns(alphabet: tuple[str, ...], max_tokens: int) -> list[str]:
    """Every pattern of up to ``max_tokens`` tokens over ``alphabet``, ``*`` and ``>``."""
    out = []
    for n in range(1, max_tokens + 1):
        for tokens in itertools.product((*alphabet, "*"), repeat=n):
            out.append(".".join(tokens))
        for tokens in itertools.product((*alphabet, "*"), repeat=n - 1):
            out.append(".".join((*tokens, ">")))
    return out


def _by_length(items: list[str]) -> st.SearchStrategy[str]:
    """Pick a length (1-4 tokens) uniformly, then an item of that length."""
    lengths = sorted({item.count(".") for item in items})
    return st.one_of(*(st.sampled_from([i for i in items if i.count(".") == n]) for n in lengths))


# Drawing from precomputed lists keeps Hypothesis' per-example cost low. Tokens come
# from a small alphabet so that patterns and topics actually match.
small_topics = _by_length(list(_enumerate_topics(ALPHABET, 4)))


@functools.cache
def small_patterns(alphabet: tuple[str, ...] = ALPHABET) -> st.SearchStrategy[str]:
    """Patterns of 1-4 tokens over ``alphabet`` with ``*`` and maybe a final ``>``."""
    return _by_length(_all_small_patterns(alphabet, 4))


@st.composite
def generalized(draw: st.DrawFn, pattern: str) -> str:
    """A pattern derived from ``pattern`` by widening it (likely, not surely, covering)."""
    tokens = pattern.split(".")
    out = [draw(st.sampled_from([t, t, "*", "a"])) if t != ">" else t for t in tokens]
    if draw(st.booleans()):
        cut = draw(st.integers(min_value=0, max_value=len(out) - 1))
        out = [*out[:cut], ">"]
    return ".".join(out)


@st.composite
def grant_and_pattern(draw: st.DrawFn) -> tuple[str, str]:
    pattern = draw(small_patterns())
    widen = draw(st.booleans())
    grant = draw(generalized(pattern) if widen else small_patterns())
    return grant, pattern


WEIRD_CHARS = [
    "a",
    "Z",
    "0",
    "-",
    "é",
    "日",
    "🎉",
    "\u200d",
    ".",
    ".",
    "*",
    ">",
    " ",
    "\t",
    "\n",
    "\x00",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "\xa0",
    "\u2028",
    "\u3000",
    "\ud800",
    "\udfff",
]
weird_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from(WEIRD_CHARS), max_size=60),
    st.lists(
        st.one_of(
            st.sampled_from(["a", "*", ">", "", "日本", "a b", "x*", ">y"]),
            st.text(alphabet=st.sampled_from(WEIRD_CHARS), max_size=3),
        ),
        max_size=40,
    ).map(".".join),
)


# ------------------------------------------------------------------------ validation

VALID_TOPICS = [
    "a",
    "orders.eu.created",
    "a-b_c:d.e/f.g|h#1",
    "日本.東京",
    "café.naïve",
    "emoji.🎉",
    "family.👩\u200d👧",  # zero-width joiner (format character) is allowed
    "x" * MAX_TOPIC_LENGTH,
    ".".join(["a"] * MAX_TOKENS),
    "a<b.c=d",
]

INVALID_TOPICS = [
    ("", "empty"),
    ("x" * (MAX_TOPIC_LENGTH + 1), "too long"),
    (".".join(["a"] * (MAX_TOKENS + 1)), "too many tokens"),
    (".", "starts with a dot"),
    (".a", "starts with a dot"),
    ("a.", "ends with a dot"),
    ("a..b", "double dot"),
    ("a b", "whitespace"),
    (" a", "whitespace"),
    ("a\t", "whitespace"),
    ("a.b\nc", "whitespace"),
    ("a\xa0b", "whitespace"),  # no-break space
    ("a\u2028b", "whitespace"),  # line separator
    ("a\u3000b", "whitespace"),  # ideographic space
    ("a\x00b", "control character"),
    ("a\x7f", "control character"),
    ("a\x9f", "control character"),
    ("a\ud800", "surrogate"),
    ("*", "wildcard"),
    (">", "wildcard"),
    ("a.*", "wildcard"),
    ("a.>", "wildcard"),
    ("a*", "wildcard"),
    ("a.b>c", "wildcard"),
]

VALID_PATTERNS = [
    *VALID_TOPICS,
    "*",
    ">",
    "a.*",
    "a.>",
    "*.*.>",
    "*.b.*",
    "orders.*.created",
    "日本.*.>",
    ".".join(["*"] * MAX_TOKENS),
    ".".join(["*"] * (MAX_TOKENS - 1) + [">"]),
]

INVALID_PATTERNS = [
    ("", "empty"),
    ("x" * (MAX_TOPIC_LENGTH + 1), "too long"),
    (".".join(["*"] * (MAX_TOKENS + 1)), "too many tokens"),
    (".", "starts with a dot"),
    ("*.", "ends with a dot"),
    (".>", "starts with a dot"),
    ("a..*", "double dot"),
    ("a.>.b", "may only be the last token"),
    (">.a", "may only be the last token"),
    (">.>", "may only be the last token"),
    ("a*", "whole token"),
    ("*a", "whole token"),
    ("a.b*.c", "whole token"),
    (">>", "whole token"),
    ("**", "whole token"),
    ("a.>b", "whole token"),
    ("a. *", "whitespace"),
    ("* ", "whitespace"),
    ("a.\x00", "control character"),
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_validate_topic_accepts(topic: str) -> None:
    validate_topic(topic)
    assert not is_pattern(topic)


@pytest.mark.parametrize(("topic", "reason"), INVALID_TOPICS)
def test_validate_topic_rejects(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopic, match=reason):
        validate_topic(topic)


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_validate_pattern_accepts(pattern: str) -> None:
    validate_pattern(pattern)


@pytest.mark.parametrize(("pattern", "reason"), INVALID_PATTERNS)
def test_validate_pattern_rejects(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidTopic, match=reason):
        validate_pattern(pattern)


@pytest.mark.parametrize("bad", [None, 1, b"a.b", ["a"], 1.5])
@pytest.mark.parametrize("validate", [validate_topic, validate_pattern])
def test_validators_reject_non_strings(validate: object, bad: object) -> None:
    assert callable(validate)
    with pytest.raises(InvalidTopic, match="must be a string"):
        validate(bad)


def test_error_messages_quote_safely() -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic("a.b\x1bc")
    message = str(info.value)
    assert "\x1b" not in message  # escaped, not echoed raw to the client
    assert "U+001B" in message
    with pytest.raises(InvalidTopic) as info:
        validate_topic("x" * 200 + " ")
    assert len(str(info.value)) < 120  # long input is abbreviated


def test_invalid_topic_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        validate_topic("")


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("a", False),
        ("a.b", False),
        ("*", True),
        (">", True),
        ("a.*.c", True),
        ("a.>", True),
        ("a*", False),
        ("a.b>c", False),
    ],
)
def test_is_pattern(s: str, expected: bool) -> None:
    assert is_pattern(s) is expected


@settings(max_examples=150, deadline=None)
@given(weird_text)
def test_validators_raise_only_invalid_topic_and_agree_with_reference(s: str) -> None:
    for validate, pattern in ((validate_topic, False), (validate_pattern, True)):
        try:
            validate(s)
        except InvalidTopic as exc:
            assert str(exc)
            assert not ref_valid(s, pattern=pattern), (s, exc)
        else:
            assert ref_valid(s, pattern=pattern), s


# ------------------------------------------------------------------ matches / covers

MATCH_CASES = [
    ("a", "a", True),
    ("a", "b", False),
    ("a.b", "a", False),
    ("a", "a.b", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a", False),  # '*' does not match zero tokens
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("*.*", "a.b", True),
    (">", "a", True),
    (">", "a.b.c", True),
    ("a.>", "a", False),  # '>' needs at least one token
    ("a.>", "a.b", True),
    ("a.>", "a.b.c", True),
    ("a.>", "b.c", False),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
    ("orders.*.created", "orders.eu.created", True),
    ("orders.*.created", "orders.created", False),
    ("orders.*.created", "orders.eu.west.created", False),
    ("orders.>", "orders.eu.created", True),
    ("日本.*", "日本.東京", True),
    ("ab", "a", False),
    ("a", "ab", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCH_CASES)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert ref_matches(pattern, topic) is expected  # the reference agrees with the table
    assert matches(pattern, topic) is expected
    assert covers(pattern, topic) is expected


_LONG_PREFIX_1 = "x" * 252  # + ".>" is 254 characters: room for one tail token only
_LONG_PREFIX_2 = "x" * 251  # + ".>" is 253 characters: "x...x.a.b" (255) still fits

COVER_CASES = [
    ("orders.>", "orders.*.created", True),
    ("orders.*", "orders.>", False),
    ("orders.*", "orders.eu", True),
    ("orders.eu", "orders.*", False),
    (">", "a", True),
    (">", "*", True),
    (">", ">", True),
    (">", "a.b.c.d", True),
    ("*", ">", False),
    ("*", "*", True),
    ("*", "a", True),
    ("a", "*", False),
    ("a", "a", True),
    ("a", "b", False),
    ("a.b", "a", False),
    ("a", "a.b", False),
    ("a.>", "a", False),
    ("a.>", "a.>", True),
    ("a.>", "a.b.>", True),
    ("a.b.>", "a.>", False),
    ("a.*", "a.b", True),
    ("a.*", "a.*.c", False),
    ("a.*.>", "a.>", False),
    ("a.>", "a.*.>", True),
    ("*.>", "a.>", True),
    ("*.>", ">", False),
    ("*.*", "*.>", False),
    ("*.*.>", "a.*.b.>", True),
    ("a.*", "b.*", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.*.d", False),
    # The length limits: a final '>' with room for only one more token is a '*'.
    (".".join(["*"] * MAX_TOKENS), ".".join(["*"] * (MAX_TOKENS - 1) + [">"]), True),
    (".".join(["a"] * (MAX_TOKENS - 1) + ["*"]), ".".join(["a"] * (MAX_TOKENS - 1) + [">"]), True),
    (".".join(["a"] * (MAX_TOKENS - 1) + ["b"]), ".".join(["a"] * (MAX_TOKENS - 1) + [">"]), False),
    (".".join(["*"] * (MAX_TOKENS - 1)), ".".join(["*"] * (MAX_TOKENS - 2) + [">"]), False),
    (_LONG_PREFIX_1 + ".*", _LONG_PREFIX_1 + ".>", True),
    (_LONG_PREFIX_2 + ".*", _LONG_PREFIX_2 + ".>", False),
]


@pytest.mark.parametrize(("grant", "pattern", "expected"), COVER_CASES)
def test_covers(grant: str, pattern: str, expected: bool) -> None:
    validate_pattern(grant)
    validate_pattern(pattern)
    assert covers(grant, pattern) is expected


def test_covers_length_limit_witnesses() -> None:
    # The witnesses behind the False cases near the limits are valid topics.
    witness = _LONG_PREFIX_2 + ".a.b"
    validate_topic(witness)
    assert matches(_LONG_PREFIX_2 + ".>", witness)
    assert not matches(_LONG_PREFIX_2 + ".*", witness)
    witness = ".".join(["a"] * MAX_TOKENS)
    validate_topic(witness)
    assert matches(".".join(["*"] * (MAX_TOKENS - 2) + [">"]), witness)
    assert not matches(".".join(["*"] * (MAX_TOKENS - 1)), witness)


def test_covers_exhaustively_against_brute_force() -> None:
    # Every pair of patterns of up to 4 tokens over {a, b} (160 patterns): topics of up
    # to 5 tokens over {a, b, z} decide coverage exactly (see brute_force_covers).
    pats = _all_small_patterns(("a", "b"), 4)
    topics = _enumerate_topics(("a", "b", "z"), 5)
    matched = {p: frozenset(t for t in topics if ref_matches(p, t)) for p in pats}
    outcomes = set()
    for grant in pats:
        for pattern in pats:
            expected = matched[pattern] <= matched[grant]
            assert covers(grant, pattern) is expected, (grant, pattern)
            outcomes.add(expected)
    assert outcomes == {True, False}


@settings(max_examples=200, deadline=None)
@given(grant_and_pattern())
def test_covers_is_sound_and_complete(pair: tuple[str, str]) -> None:
    grant, pattern = pair
    assert covers(grant, pattern) is brute_force_covers(grant, pattern)


@settings(max_examples=150, deadline=None)
@given(small_patterns(), small_patterns(), small_topics)
def test_covers_algebra(a: str, b: str, topic: str) -> None:
    assert covers(a, a)
    assert covers(a, topic) is matches(a, topic)  # a topic is a one-topic pattern
    if covers(a, b) and matches(b, topic):
        assert matches(a, topic)
    if covers(a, b) and covers(b, a):
        assert a == b  # distinct valid patterns never denote the same topics


@settings(max_examples=200, deadline=None)
@given(small_patterns(), small_topics)
def test_matches_agrees_with_reference(pattern: str, topic: str) -> None:
    assert matches(pattern, topic) is ref_matches(pattern, topic)


# ------------------------------------------------------------------------- the trie


def _expected(model: dict[str, set[int]], topic: str) -> set[int]:
    return {v for p, vs in model.items() if ref_matches(p, topic) for v in vs}


def test_add_and_remove_report_first_and_last_subscriber() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.add("a.*", "x") is True
    assert trie.add("a.*", "x") is False  # idempotent
    assert trie.add("a.*", "y") is False
    assert len(trie) == 1
    assert "a.*" in trie
    assert trie.values("a.*") == frozenset({"x", "y"})
    assert trie.remove("a.*", "z") is False  # absent value
    assert trie.remove("b", "x") is False  # absent pattern
    assert trie.remove("a..b", "x") is False  # invalid pattern: absent, no error
    assert trie.remove("a.*", "x") is False
    assert trie.remove("a.*", "x") is False
    assert trie.remove("a.*", "y") is True
    assert trie.remove("a.*", "y") is False
    assert len(trie) == 0
    assert "a.*" not in trie
    assert trie.values("a.*") == frozenset()
    assert trie.patterns() == []


def test_add_rejects_invalid_patterns_without_changing_the_trie() -> None:
    trie: TopicTrie[int] = TopicTrie()
    for bad in ["a.>.b", "", "a b", "a*"]:
        with pytest.raises(InvalidTopic):
            trie.add(bad, 1)
    assert len(trie) == 0
    assert trie._count_nodes() == 0


def test_match_returns_each_value_once() -> None:
    trie: TopicTrie[int] = TopicTrie()
    for pattern in ["a.b", "a.*", "*.b", "*.*", "a.>", ">", "*.>"]:
        trie.add(pattern, 1)
    trie.add("a.b", 2)
    trie.add("a.c", 3)
    result = trie.match("a.b")
    assert isinstance(result, tuple)
    assert sorted(result) == [1, 2]
    assert trie.match("a.b") is result  # served from the cache
    assert sorted(trie.match("a.c")) == [1, 3]
    assert trie.match("a") == (1,)  # only '>'
    assert trie.match("x.y.z") == (1,)


def test_match_edge_cases() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("a.>", "tail")
    trie.add("a.*", "star")
    assert trie.match("a") == ()
    assert not trie.has_match("a")
    assert sorted(trie.match("a.b")) == ["star", "tail"]
    assert trie.match("a.b.c") == ("tail",)
    assert trie.has_match("a.b.c")
    assert trie.match("b.c") == ()


def test_empty_trie() -> None:
    trie: TopicTrie[int] = TopicTrie()
    assert trie.match("a") == ()
    assert not trie.has_match("a.b")
    assert len(trie) == 0
    assert trie.patterns() == []


def test_values_is_a_snapshot() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a", 1)
    snapshot = trie.values("a")
    trie.add("a", 2)
    assert snapshot == frozenset({1})
    assert trie.values("a") == frozenset({1, 2})


def test_patterns_lists_patterns_with_values() -> None:
    trie: TopicTrie[int] = TopicTrie()
    for pattern in ["a", "a.*", "a.>", "b.c"]:
        trie.add(pattern, 1)
    trie.remove("a.*", 1)
    assert sorted(trie.patterns()) == ["a", "a.>", "b.c"]
    assert len(trie) == 3


def test_removing_a_longer_pattern_keeps_its_prefix() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.b.c", 1)
    trie.add("a.b", 2)
    trie.add("a.b.>", 3)
    assert trie._count_nodes() == 3
    assert trie.remove("a.b.c", 1)
    assert trie._count_nodes() == trie._node_count == 2
    assert sorted(trie.match("a.b")) == [2]
    assert trie.match("a.b.c") == (3,)
    assert trie.remove("a.b", 2)
    assert trie._count_nodes() == trie._node_count == 2  # "a.b.>" still needs a, a.b
    assert trie.remove("a.b.>", 3)
    assert trie._count_nodes() == trie._node_count == 0


def test_churn_prunes_every_node() -> None:
    trie: TopicTrie[int] = TopicTrie()
    pats = [
        pattern
        for i in range(300)
        for pattern in (
            f"user.{i}.inbox",
            f"room.{i}.*",
            f"feed.{i % 17}.{i}.>",
            f"*.{i}",
            f"{i}",
            f"{i}.>",
            f"x.*.*.{i}.>",
        )
    ]
    for _ in range(3):
        for i, pattern in enumerate(pats):
            assert trie.add(pattern, i)
            trie.add(pattern, i + 1)
        assert len(trie) == len(pats)
        assert trie._node_count == trie._count_nodes() > len(pats)
        for topic in ["user.7.inbox", "room.3.z", "feed.5.22.q", "x.7", "7.a.b", "x.y.z.9.w"]:
            expected = {v for i, p in enumerate(pats) if matches(p, topic) for v in (i, i + 1)}
            assert expected
            assert sorted(trie.match(topic)) == sorted(expected)
        for i, pattern in enumerate(pats):
            assert not trie.remove(pattern, i)
            assert trie.remove(pattern, i + 1)
        assert len(trie) == 0
        assert trie._node_count == 0
        assert trie._count_nodes() == 0
        assert trie._root.is_empty()
        assert trie.match("user.7.inbox") == ()


def test_match_cache_is_bounded() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("t.>", 1)
    for i in range(TopicTrie.CACHE_SIZE * 2 + 10):
        assert trie.match(f"t.{i}") == (1,)
        assert len(trie._cache) <= TopicTrie.CACHE_SIZE
    assert trie.match("t.0") == (1,)


def test_concrete_change_only_invalidates_its_own_topic() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.*", 1)
    assert trie.match("a.b") == (1,)
    assert trie.match("a.c") == (1,)
    trie.add("a.c", 2)
    assert "a.b" in trie._cache  # unaffected entry kept
    assert sorted(trie.match("a.c")) == [1, 2]
    trie.add("*.c", 3)  # a wildcard change may affect any topic
    assert trie._cache == {}
    assert sorted(trie.match("a.c")) == [1, 2, 3]
    trie.remove("a.c", 2)
    assert sorted(trie.match("a.c")) == [1, 3]
    assert trie.match("a.b") == (1,)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(small_patterns(), VALUES), max_size=30),
    st.lists(small_topics, min_size=1, max_size=15),
)
def test_trie_match_agrees_with_reference(subs: list[tuple[str, int]], topics: list[str]) -> None:
    trie: TopicTrie[int] = TopicTrie()
    model: dict[str, set[int]] = {}
    for pattern, value in subs:
        assert trie.add(pattern, value) is (pattern not in model)
        model.setdefault(pattern, set()).add(value)
    for topic in topics:
        expected = _expected(model, topic)
        assert trie.has_match(topic) is bool(expected)  # before match: uncached path
        result = trie.match(topic)
        assert len(result) == len(set(result)), result
        assert set(result) == expected
        assert trie.has_match(topic) is bool(expected)  # cached path


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(small_patterns(), VALUES), max_size=15),
    st.lists(st.tuples(st.booleans(), small_patterns(), VALUES), min_size=1, max_size=10),
    st.lists(small_topics, min_size=1, max_size=10),
)
def test_cache_is_invalidated_by_changes(
    subs: list[tuple[str, int]],
    ops: list[tuple[bool, str, int]],
    topics: list[str],
) -> None:
    trie: TopicTrie[int] = TopicTrie()
    model: dict[str, set[int]] = {}
    for pattern, value in subs:
        trie.add(pattern, value)
        model.setdefault(pattern, set()).add(value)
    for topic in topics:
        trie.match(topic)  # warm the cache
    for add, pattern, value in ops:
        if add:
            trie.add(pattern, value)
            model.setdefault(pattern, set()).add(value)
        else:
            trie.remove(pattern, value)
            model.get(pattern, set()).discard(value)
            if not model.get(pattern, True):
                del model[pattern]
        for topic in topics:
            assert set(trie.match(topic)) == _expected(model, topic)


class TrieMachine(RuleBasedStateMachine):
    """Random interleavings of add/remove/match against a dict-of-sets model."""

    def __init__(self) -> None:
        super().__init__()
        self.trie: TopicTrie[int] = TopicTrie()
        self.model: dict[str, set[int]] = {}

    @rule(pattern=small_patterns(), value=VALUES)
    def add(self, pattern: str, value: int) -> None:
        first = pattern not in self.model
        assert self.trie.add(pattern, value) is first
        self.model.setdefault(pattern, set()).add(value)

    def _remove(self, pattern: str, value: int) -> None:
        values = self.model.get(pattern, set())
        last = values == {value}
        assert self.trie.remove(pattern, value) is last
        values.discard(value)
        if not values:
            self.model.pop(pattern, None)

    @rule(pattern=small_patterns(), value=VALUES)
    def remove_any(self, pattern: str, value: int) -> None:
        self._remove(pattern, value)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        pattern = data.draw(st.sampled_from(sorted(self.model)))
        value = data.draw(st.sampled_from(sorted(self.model[pattern])))
        self._remove(pattern, value)

    @rule(topic=small_topics)
    def match(self, topic: str) -> None:
        expected = _expected(self.model, topic)
        assert self.trie.has_match(topic) is bool(expected)
        result = self.trie.match(topic)
        assert len(result) == len(set(result))
        assert set(result) == expected

    @invariant()
    def consistent(self) -> None:
        trie = self.trie
        assert len(trie) == len(self.model)
        assert sorted(trie.patterns()) == sorted(self.model)
        for pattern, values in self.model.items():
            assert pattern in trie
            assert trie.values(pattern) == values
        assert trie._node_count == trie._count_nodes()
        for topic, cached in trie._cache.items():  # no stale cache entry
            assert set(cached) == _expected(self.model, topic), topic

    def teardown(self) -> None:
        for pattern, values in list(self.model.items()):
            for value in sorted(values):
                self._remove(pattern, value)
        assert len(self.trie) == 0
        assert self.trie._node_count == 0
        assert self.trie._count_nodes() == 0


TestTrieStateMachine = TrieMachine.TestCase
TestTrieStateMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
