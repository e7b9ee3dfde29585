"""Every Redis key and channel name wsgate uses, built from one prefix.

No other module spells a name: backends call these functions, so the layout
below is the whole truth about what wsgate puts in Redis. ``{prefix}`` is the
configured prefix (``broker.prefix``, default :data:`DEFAULT_PREFIX`); one
Redis server can host several gateways under different prefixes, as long as
no prefix starts with another one's ``{prefix}:`` (``a`` and ``a:t:x`` would
overlap; ``a`` and ``b`` do not).

======================  =======================  ===================================
name                    kind, who subscribes     lifetime
======================  =======================  ===================================
``{prefix}:t:{topic}``  pub/sub channel; nodes   none (pub/sub holds no data): a
                        with a local subscriber  node subscribes it on its first
                        of exactly ``{topic}``   local subscriber, drops it on the
                                                 last
``{prefix}:t:{glob}``   pub/sub *pattern*        same, for wildcard patterns; see
                        (PSUBSCRIBE); nodes      :func:`pattern_glob`
                        with a wildcard pattern
``{prefix}:broadcast``  pub/sub channel; every   from a node's start to its close
                        node
``{prefix}:n:{node}``   pub/sub channel; the     from the node's start to its
                        node ``{node}`` only     close; it also tells that a node
                                                 id is in use (``PUBSUB NUMSUB``);
                                                 direct messages will travel here
======================  =======================  ===================================

Keys (stored values) carry a TTL, so that nothing outlives the node that
wrote it by more than its lease (history will add its keys here, each with its
TTL). Presence (:mod:`wsgate.broker.redis_presence`) writes these; ``{lease}``
is the writing node's lease, renewed by its heartbeat every ``{lease}/3``:

=============================  ===========================  ============================
name                           type, holds                  lifetime (TTL)
=============================  ===========================  ============================
``{prefix}:c:{connection}``    string: the registration,    ``PX {lease}`` of the node
                               ``node US token``, then      holding it, renewed by its
                               ``US user`` if it has one    heartbeat; deleted by
                               (US: the byte ``\\x1f``;      ``unregister`` only while it
                               the user is last, so it      is still that registration
                               may hold any character)      (compare-and-delete)
``{prefix}:u:{user}``          sorted set: the user's       at least ``PX {lease}`` of
                               connection ids, scored by    the latest writer (never
                               the expiry (ms, Redis        shortened); members whose
                               ``TIME``) of their entry;    score has passed are trimmed
                               an index only: readers       at each write
                               check each ``c:`` entry
``{prefix}:node:{node}``       string: a token of the       ``PX {lease}``, renewed by
                               node's running instance      the heartbeat; deleted by
                               (the node's lease)           ``close``
``{prefix}:nodes``             sorted set: node ids,        at least ``PX {lease}`` of
                               scored by their lease's      the latest writer; passed
                               expiry (ms); readers check   members are trimmed at each
                               each ``node:`` key           heartbeat
=============================  ===========================  ============================

Client ``call``s served by backend workers (:mod:`wsgate.broker.redis_calls`);
``{namespace}`` is a method's first dotted token (``orders`` for
``orders.create``), ``{lease}`` the worker lease (about 3 s, renewed every
second or faster):

================================  ============================  ============================
name                              type, holds                   lifetime (TTL)
================================  ============================  ============================
``{prefix}:calls:{namespace}``    stream: one entry per call    ``PX`` one hour, renewed by
                                  (field ``d``: the envelope)   every worker heartbeat;
                                  in the consumer group         entries are deleted once
                                  :data:`CALL_GROUP`, one       acknowledged; ``XADD`` trims
                                  consumer per worker id        it to about 10,000 entries
``{prefix}:workers:{namespace}``  sorted set: live worker ids,  at least ``PX {lease}`` of
                                  scored by their lease's       the latest writer; passed
                                  expiry (ms, Redis ``TIME``)   members are trimmed at each
                                                                heartbeat; a stopping worker
                                                                removes itself
================================  ============================  ============================

Topics may contain characters that Redis glob patterns treat specially
(``?``, ``[``, ``]``, ``\\``; see :func:`wsgate.topics.validate_topic`, which
only forbids ``*`` and ``>``, whitespace and controls). Channel names are
literal, so only globs escape them (:func:`glob_escape`).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CALL_GROUP",
    "DEFAULT_PREFIX",
    "broadcast_channel",
    "call_stream",
    "call_workers",
    "glob_escape",
    "node_inbox",
    "pattern_glob",
    "presence_connection",
    "presence_node",
    "presence_nodes",
    "presence_user",
    "presence_user_prefix",
    "topic_channel",
    "topic_channel_prefix",
    "topic_from_channel",
]

DEFAULT_PREFIX: Final = "wsgate"
"""The prefix used when none is configured."""
CALL_GROUP: Final = "workers"
"""The consumer group of every call stream (each worker is one consumer in it)."""

# Characters with a meaning in Redis glob-style patterns (PSUBSCRIBE, KEYS, SCAN
# MATCH): '*' any string, '?' any one byte, '[...]' a class (with '^' and '-'
# inside), '\' escapes the next character. Outside a class, escaping these five
# makes every other character literal (Redis util.c, stringmatchlen).
_GLOB_SPECIAL: Final = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob that matches exactly ``text``.

    Args:
        text: any string (a prefix, a topic token).

    Returns:
        ``text`` with a backslash before every glob metacharacter.
    """
    if not any(char in _GLOB_SPECIAL for char in text):
        return text
    return "".join("\\" + char if char in _GLOB_SPECIAL else char for char in text)


def topic_channel_prefix(prefix: str) -> str:
    """The start shared by every topic channel name of ``prefix``."""
    return f"{prefix}:t:"


def topic_channel(prefix: str, topic: str) -> str:
    """The pub/sub channel publications on ``topic`` are published to.

    Args:
        prefix: the configured prefix.
        topic: a concrete topic (valid, see :func:`wsgate.topics.validate_topic`).
    """
    return f"{prefix}:t:{topic}"


def topic_from_channel(prefix: str, channel: str) -> str | None:
    """The topic of a topic channel name, or None when ``channel`` is not one.

    The inverse of :func:`topic_channel`; the topic is not validated.
    """
    start = topic_channel_prefix(prefix)
    if not channel.startswith(start) or len(channel) == len(start):
        return None
    return channel[len(start) :]


def pattern_glob(prefix: str, pattern: str) -> str:
    """The Redis glob a node PSUBSCRIBEs for a wildcard ``pattern``.

    The glob *over-approximates* the pattern: Redis globs have no "one token"
    wildcard, so both ``*`` (one token) and ``>`` (one or more tokens) become
    Redis ``*``, which matches any string, dots included. ``orders.*`` becomes
    ``{prefix}:t:orders.*`` and also matches the channel of ``orders.eu.created``;
    the broker filters every arrival exactly with :func:`wsgate.topics.matches`.
    Literal tokens are escaped, so every channel of a topic the pattern matches
    is matched by the glob (never the other way round).

    Args:
        prefix: the configured prefix.
        pattern: a valid pattern (a concrete topic works too, but is better
            served by :func:`topic_channel` and SUBSCRIBE).
    """
    tokens = ["*" if token in ("*", ">") else glob_escape(token) for token in pattern.split(".")]
    return glob_escape(topic_channel_prefix(prefix)) + ".".join(tokens)


def broadcast_channel(prefix: str) -> str:
    """The channel every node subscribes to for broadcasts."""
    return f"{prefix}:broadcast"


def node_inbox(prefix: str, node_id: str) -> str:
    """The channel of one node: direct messages, and proof that the node id is taken."""
    return f"{prefix}:n:{node_id}"


def presence_connection(prefix: str, connection_id: str) -> str:
    """The key holding where a connection lives (its registration)."""
    return f"{prefix}:c:{connection_id}"


def presence_user_prefix(prefix: str) -> str:
    """The start of every user index key (scripts append a user id to it)."""
    return f"{prefix}:u:"


def presence_user(prefix: str, user: str) -> str:
    """The key indexing the connection ids of one user."""
    return presence_user_prefix(prefix) + user


def presence_node(prefix: str, node_id: str) -> str:
    """The key holding a node's lease (the token of its running instance)."""
    return f"{prefix}:node:{node_id}"


def presence_nodes(prefix: str) -> str:
    """The key indexing the ids of the nodes that hold (or recently held) a lease."""
    return f"{prefix}:nodes"


def call_stream(prefix: str, namespace: str) -> str:
    """The stream queuing the calls of one method namespace for its workers."""
    return f"{prefix}:calls:{namespace}"


def call_workers(prefix: str, namespace: str) -> str:
    """The key indexing the live workers of one method namespace (their leases)."""
    return f"{prefix}:workers:{namespace}"
