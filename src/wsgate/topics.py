"""Topics, patterns, matching, coverage, and the subscription index.

A *topic* is a concrete name made of dot-separated tokens, e.g. ``orders.eu.created``.
A *pattern* is a topic that may contain wildcard tokens. The rules are those of NATS
subjects:

* A topic or pattern is 1 to :data:`MAX_TOPIC_LENGTH` (255) characters long (Unicode
  code points, not bytes) and has at most :data:`MAX_TOKENS` (32) tokens.
* Every token is non-empty: no leading, trailing or double dot.
* A token may contain any Unicode character except the separator ``.``, whitespace
  (anything :meth:`str.isspace` accepts), control characters (category ``Cc``),
  unpaired surrogates, and the wildcard characters ``*`` and ``>``.
* In a pattern, a token may also be exactly ``*``, which matches exactly one token, or
  exactly ``>`` when it is the last token, which matches one or more trailing tokens.
  A wildcard character inside a longer token (``a*``, ``>b``) is invalid, as is ``>``
  anywhere but last.

So ``orders.*.created`` matches ``orders.eu.created`` but not ``orders.created`` nor
``orders.eu.west.created``; ``orders.>`` matches ``orders.eu`` and
``orders.eu.created`` but not ``orders`` itself.

A concrete topic is also a valid pattern (one that matches only itself), so every
function taking a pattern accepts a topic too.

:class:`TopicTrie` is the subscription index used for fan-out: it maps patterns to sets
of values and answers "who is subscribed to this topic" without scanning all
subscriptions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable
from typing import Final, Generic, NoReturn, TypeVar

from wsgate.errors import InvalidTopic

__all__ = [
    "MAX_TOKENS",
    "MAX_TOPIC_LENGTH",
    "TopicTrie",
    "covers",
    "is_pattern",
    "matches",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_LENGTH: Final = 255
"""Longest valid topic or pattern, in characters (code points)."""

MAX_TOKENS: Final = 32
"""Most tokens a valid topic or pattern may have."""

T = TypeVar("T", bound=Hashable)

# Characters no literal token may contain, besides the separator itself: whitespace
# (``\s`` is exactly ``str.isspace`` for str patterns), C0/DEL/C1 controls (category
# Cc), unpaired surrogates (not encodable as UTF-8) and the two wildcard characters.
_FORBIDDEN = r"\s\x00-\x1f\x7f-\x9f\ud800-\udfff*>"
_LITERAL = rf"[^.{_FORBIDDEN}]+"
_TOPIC_RE: Final = re.compile(rf"{_LITERAL}(?:\.{_LITERAL})*")
_PATTERN_RE: Final = re.compile(
    rf"(?:(?:{_LITERAL}|\*)(?:\.(?:{_LITERAL}|\*))*(?:\.>)?)|>",
)
_SHOWN_MAX: Final = 40  # longest excerpt of a bad input quoted in an error message

# --------------------------------------------------------------------------- validation


def validate_topic(topic: str) -> None:
    """Check that ``topic`` is a well-formed concrete topic (no wildcards).

    Args:
        topic: the topic to check.

    Raises:
        InvalidTopic: when ``topic`` is not a string, is empty, is longer than
            :data:`MAX_TOPIC_LENGTH`, has more than :data:`MAX_TOKENS` tokens, has an
            empty token, or has a token containing whitespace, a control character,
            an unpaired surrogate, or a wildcard character (``*`` or ``>``). The
            message says which rule is broken and is safe to show to clients.
    """
    _validate(topic, "topic", _TOPIC_RE)


def validate_pattern(pattern: str) -> None:
    """Check that ``pattern`` is a well-formed subscription pattern.

    The rules are those of :func:`validate_topic`, except that a token may be exactly
    ``*``, or exactly ``>`` when it is the last token.

    Args:
        pattern: the pattern (or concrete topic) to check.

    Raises:
        InvalidTopic: when ``pattern`` breaks a rule; the message says which one and
            is safe to show to clients.
    """
    _validate(pattern, "pattern", _PATTERN_RE)


def _validate(s: object, kind: str, regex: re.Pattern[str]) -> None:
    if not isinstance(s, str):
        raise InvalidTopic(f"{kind} must be a string, not {type(s).__name__}")
    if not s:
        raise InvalidTopic(f"{kind} must not be empty")
    if len(s) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(
            f"{kind} is too long: {len(s)} characters, at most {MAX_TOPIC_LENGTH} allowed"
        )
    ntokens = s.count(".") + 1
    if ntokens > MAX_TOKENS:
        raise InvalidTopic(f"{kind} has too many tokens: {ntokens}, at most {MAX_TOKENS} allowed")
    if regex.fullmatch(s) is None:
        _explain(s, kind, wildcards=kind == "pattern")


def _show(s: str) -> str:
    """Quote (an excerpt of) client input for an error message, escaping controls."""
    if len(s) > _SHOWN_MAX:
        s = s[: _SHOWN_MAX - 3] + "..."
    return repr(s)


def _explain(s: str, kind: str, *, wildcards: bool) -> NoReturn:
    """Raise InvalidTopic describing the first problem of ``s`` (which has one)."""
    tokens = s.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            if i == 0:
                where = "starts with a dot"
            elif i == last:
                where = "ends with a dot"
            else:
                where = "contains a double dot"
            raise InvalidTopic(f"{kind} {_show(s)} {where} (empty token)")
        for char in token:
            problem = _char_problem(char)
            if problem is not None:
                raise InvalidTopic(
                    f"{kind} token {_show(token)} contains {problem} (U+{ord(char):04X})"
                )
        if "*" not in token and ">" not in token:
            continue
        if not wildcards:
            wildcard = next(char for char in token if char in "*>")
            raise InvalidTopic(
                f"topic {_show(s)} contains the wildcard {wildcard!r}; "
                "a topic must be concrete (wildcards are only allowed in patterns)"
            )
        if token == "*" or (token == ">" and i == last):
            continue
        if token == ">":
            raise InvalidTopic(f"pattern {_show(s)}: the wildcard '>' may only be the last token")
        raise InvalidTopic(
            f"pattern token {_show(token)} mixes a wildcard with other characters; "
            "a wildcard must be a whole token"
        )
    # Unreachable when the regexes and the rules above agree (the tests check they do);
    # still refuse rather than accept something the fast path rejected.
    raise InvalidTopic(f"{kind} {_show(s)} is not well formed")  # pragma: no cover


def _char_problem(char: str) -> str | None:
    if char.isspace():
        return "whitespace"
    category = unicodedata.category(char)
    if category == "Cc":
        return "a control character"
    if category == "Cs":
        return "an unpaired surrogate"
    return None


# ---------------------------------------------------------------- matching and coverage


def is_pattern(s: str) -> bool:
    """Tell whether ``s`` contains a wildcard token (``*`` or ``>``).

    Args:
        s: a topic or pattern (not validated; ``a*`` has no wildcard *token*).

    Returns:
        True when some token of ``s`` is exactly ``*`` or ``>``.
    """
    if "*" not in s and ">" not in s:
        return False
    return any(token in {"*", ">"} for token in s.split("."))


def matches(pattern: str, topic: str) -> bool:
    """Tell whether the concrete ``topic`` matches ``pattern``.

    Both arguments are assumed valid (see :func:`validate_pattern` and
    :func:`validate_topic`); nothing is checked here.

    Args:
        pattern: a pattern or a concrete topic.
        topic: a concrete topic.

    Returns:
        True when ``topic`` is one of the topics ``pattern`` stands for.
    """
    if pattern == topic:
        return True
    ptokens = pattern.split(".")
    ttokens = topic.split(".")
    ntopic = len(ttokens)
    for i, ptoken in enumerate(ptokens):
        if ptoken == ">":
            return ntopic > i
        if i >= ntopic:
            return False
        if ptoken != "*" and ptoken != ttokens[i]:
            return False
    return len(ptokens) == ntopic


def covers(grant: str, pattern: str) -> bool:
    """Tell whether every topic matched by ``pattern`` is also matched by ``grant``.

    This is the permission check: a client granted ``orders.>`` may subscribe to
    ``orders.*.created`` (covered), but one granted ``orders.*`` may not subscribe to
    ``orders.>`` (``orders.eu.created`` is not covered). Concrete topics are patterns
    matching only themselves, so ``covers(grant, topic) == matches(grant, topic)``.

    The answer is exact over the set of valid topics, including their length limits:
    when :data:`MAX_TOKENS` or :data:`MAX_TOPIC_LENGTH` leave room for only one token
    after a pattern's final ``>``, that ``>`` stands for the same topics as ``*``.

    Both arguments are assumed valid patterns; nothing is checked here.

    Args:
        grant: the pattern (or topic) the client holds.
        pattern: the pattern (or topic) the client asks for.

    Returns:
        True when the topics of ``pattern`` are a subset of the topics of ``grant``.
    """
    if grant == pattern:
        return True
    gtokens = grant.split(".")
    ptokens = pattern.split(".")
    npattern = len(ptokens)
    glast = len(gtokens) - 1
    for i, gtoken in enumerate(gtokens):
        if gtoken == ">":
            # Covers any non-empty rest; the pattern's topics have one iff it has tokens left.
            return npattern > i
        if i >= npattern:
            # The pattern's topics end here, the grant's need more tokens.
            return False
        ptoken = ptokens[i]
        if ptoken == ">":
            # The pattern's tail is any non-empty token sequence (of any first token, of
            # any length the limits allow); without '>' the grant's rest only fits one
            # length, so it covers only when that is a single '*' and the limits allow no
            # longer tail than one token.
            return gtoken == "*" and i == glast and _single_token_tail(pattern, npattern)
        if gtoken not in ("*", ptoken):
            # A different literal, or a literal versus '*' (which also matches tokens
            # other than that literal).
            return False
    return len(gtokens) == npattern


def _single_token_tail(pattern: str, ntokens: int) -> bool:
    """Whether the final ``>`` of a valid pattern can only match one token."""
    # '>' is the last of MAX_TOKENS tokens, or fewer than 3 characters ("x.y") remain
    # after the prefix (``len(pattern) - 1`` characters, trailing dot included).
    return ntokens >= MAX_TOKENS or len(pattern) - 1 + 3 > MAX_TOPIC_LENGTH


# -------------------------------------------------------------------------------- trie


class _Node(Generic[T]):
    """One trie node; it stands for the token path leading to it from the root.

    Empty containers are stored as None (never as an empty dict or set), so a node is
    empty, and can be pruned, exactly when all four slots are None.
    """

    __slots__ = ("children", "star", "tail", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] | None = None  # literal next tokens
        self.star: _Node[T] | None = None  # next token '*'
        self.values: set[T] | None = None  # values of the pattern ending here
        self.tail: set[T] | None = None  # values of the pattern ending here + '.>'

    def is_empty(self) -> bool:
        return (
            self.children is None
            and self.star is None
            and self.values is None
            and self.tail is None
        )


class TopicTrie(Generic[T]):
    """Index of subscriptions: maps patterns (or concrete topics) to sets of values.

    Values are hashable, typically connection objects or node ids. :meth:`match` is the
    fan-out hot path: it walks only the trie branches the topic can reach (literal
    token, ``*`` and ``>`` at each level) and caches its answer per topic until a
    change to the trie could alter it.

    Not thread-safe; meant to be used from one event loop.
    """

    __slots__ = ("_cache", "_node_count", "_patterns", "_root")

    CACHE_SIZE: Final = 4096
    """The match cache is cleared when it would grow beyond this many topics."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        # pattern -> its value set; the very set object stored in its trie node.
        self._patterns: dict[str, set[T]] = {}
        self._cache: dict[str, tuple[T, ...]] = {}
        self._node_count = 0  # nodes besides the root

    def __len__(self) -> int:
        """Number of patterns holding at least one value."""
        return len(self._patterns)

    def __contains__(self, pattern: object) -> bool:
        """Whether ``pattern`` (exactly this string) holds at least one value."""
        return pattern in self._patterns

    def __repr__(self) -> str:
        return f"<TopicTrie patterns={len(self._patterns)} nodes={self._node_count}>"

    def add(self, pattern: str, value: T) -> bool:
        """Subscribe ``value`` to ``pattern``.

        Args:
            pattern: a valid pattern or concrete topic.
            value: the subscriber.

        Returns:
            True when ``pattern`` had no value before (its first subscriber: the caller
            should now subscribe to it upstream); False otherwise, including when
            ``value`` was already subscribed to it (adding is idempotent).

        Raises:
            InvalidTopic: when ``pattern`` is not a valid pattern.
        """
        existing = self._patterns.get(pattern)
        if existing is not None:
            if value not in existing:
                existing.add(value)
                self._invalidate(pattern)
            return False
        validate_pattern(pattern)
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        if tail:
            tokens.pop()
        node = self._root
        for token in tokens:
            child: _Node[T] | None
            if token == "*":
                child = node.star
                if child is None:
                    child = node.star = _Node()
                    self._node_count += 1
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                child = children.get(token)
                if child is None:
                    child = children[token] = _Node()
                    self._node_count += 1
            node = child
        values = {value}
        if tail:
            node.tail = values
        else:
            node.values = values
        self._patterns[pattern] = values
        self._invalidate(pattern)
        return True

    def remove(self, pattern: str, value: T) -> bool:
        """Unsubscribe ``value`` from ``pattern``.

        Removing a subscription that does not exist is a no-op.

        Args:
            pattern: the pattern given to :meth:`add`.
            value: the subscriber.

        Returns:
            True when ``pattern`` now has no value left (its last subscriber left: the
            caller should now unsubscribe from it upstream); False otherwise, including
            when ``value`` was not subscribed to ``pattern``.
        """
        existing = self._patterns.get(pattern)
        if existing is None or value not in existing:
            return False
        if len(existing) > 1:
            existing.remove(value)
            self._invalidate(pattern)
            return False
        del self._patterns[pattern]
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        if tail:
            tokens.pop()
        path: list[tuple[_Node[T], str]] = []
        node = self._root
        for token in tokens:
            path.append((node, token))
            if token == "*":
                child = node.star
            else:
                assert node.children is not None  # the pattern is in the trie
                child = node.children[token]
            assert child is not None
            node = child
        if tail:
            node.tail = None
        else:
            node.values = None
        # Prune the now-empty nodes, deepest first.
        while path and node.is_empty():
            parent, token = path.pop()
            if token == "*":
                parent.star = None
            else:
                children = parent.children
                assert children is not None
                del children[token]
                if not children:
                    parent.children = None
            self._node_count -= 1
            node = parent
        self._invalidate(pattern)
        return True

    def _invalidate(self, pattern: str) -> None:
        """Drop cached matches that a change to ``pattern``'s values may affect."""
        # In a valid pattern '*' and '>' only occur as wildcard tokens. A concrete
        # pattern only matches itself, so only that one cache entry can be stale.
        if "*" in pattern or ">" in pattern:
            self._cache.clear()
        else:
            self._cache.pop(pattern, None)

    def match(self, topic: str) -> tuple[T, ...]:
        """Every value subscribed to a pattern matching ``topic``, each value once.

        Args:
            topic: a valid concrete topic (not checked: this is the hot path).

        Returns:
            The matching values, in no particular order. The tuple may be shared with
            later calls; it is immutable.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result = self._lookup(topic)
        cache = self._cache
        if len(cache) >= self.CACHE_SIZE:
            cache.clear()
        cache[topic] = result
        return result

    def _lookup(self, topic: str) -> tuple[T, ...]:
        if not self._patterns:
            return ()
        found: list[set[T]] = []
        nodes = [self._root]
        for token in topic.split("."):
            following: list[_Node[T]] = []
            for node in nodes:
                if node.tail is not None:  # '>' takes this token and all after it
                    found.append(node.tail)
                children = node.children
                if children is not None:
                    child = children.get(token)
                    if child is not None:
                        following.append(child)
                if node.star is not None:
                    following.append(node.star)
            if not following:
                break
            nodes = following
        else:
            for node in nodes:
                if node.values is not None:
                    found.append(node.values)
        if not found:
            return ()
        if len(found) == 1:
            return tuple(found[0])
        return tuple(set().union(*found))

    def has_match(self, topic: str) -> bool:
        """Tell whether any value is subscribed to a pattern matching ``topic``.

        Cheaper than :meth:`match` on a cache miss: it stops at the first hit and
        allocates no result.

        Args:
            topic: a valid concrete topic (not checked).

        Returns:
            True when :meth:`match` would return a non-empty tuple.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return bool(cached)
        if not self._patterns:
            return False
        nodes = [self._root]
        for token in topic.split("."):
            following: list[_Node[T]] = []
            for node in nodes:
                if node.tail is not None:
                    return True
                children = node.children
                if children is not None:
                    child = children.get(token)
                    if child is not None:
                        following.append(child)
                if node.star is not None:
                    following.append(node.star)
            if not following:
                return False
            nodes = following
        return any(node.values is not None for node in nodes)

    def patterns(self) -> list[str]:
        """All patterns currently holding at least one value.

        Returns:
            A new list, in insertion order of the patterns' first subscribers.
        """
        return list(self._patterns)

    def values(self, pattern: str) -> frozenset[T]:
        """The values subscribed to exactly ``pattern`` (not to patterns covering it).

        Args:
            pattern: a pattern or concrete topic.

        Returns:
            A snapshot of the values; empty when ``pattern`` has none.
        """
        values = self._patterns.get(pattern)
        return frozenset() if values is None else frozenset(values)

    def _count_nodes(self) -> int:
        """Count the nodes besides the root by walking the trie (for tests)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.children is not None:
                count += len(node.children)
                stack.extend(node.children.values())
            if node.star is not None:
                count += 1
                stack.append(node.star)
        return count
