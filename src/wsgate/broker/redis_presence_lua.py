"""What runs inside Redis for :mod:`wsgate.broker.redis_presence`: scripts and value format.

A connection's entry (``{prefix}:c:{connection}``, see :mod:`wsgate.broker.keys`)
holds ``node US token``, then ``US user`` when it has a user, US being
:data:`SEPARATOR` (``\\x1f``). Node ids and tokens never contain it (the presence
refuses them); the user comes last, so a user id may hold any character. The
scripts find the user after the second separator, and compare whole values:
two registrations are the same when node, token and user all are.

Every write is one of these scripts, so each is atomic. The batch scripts take,
in ``KEYS``, each registration's ``c:`` key followed (when it has a user) by its
``u:`` key, and in ``ARGV`` a fixed head then each registration's value and
connection id. Times are Redis ``TIME`` in milliseconds, so the nodes' clocks
never matter. The scripts touch only declared keys, except ``register``, which
removes an id from the *replaced* user's index, a key it learns from the stored
value: they run on a standalone Redis (or a replicated one), not on a Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from wsgate.broker.base import Registration

__all__ = ["SCRIPTS", "SEPARATOR", "Script", "decode", "encode"]

SEPARATOR: Final = "\x1f"
"""Separates node, token and user in a stored registration (ASCII unit separator)."""

_PRELUDE: Final = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A registration is 'node US token', then 'US user' when it has one (US: \31).
local function user_of(value)
  local a = string.find(value, '\31', 1, true)
  local b = a and string.find(value, '\31', a + 1, true)
  if not b then return nil end
  return string.sub(value, b + 1)
end
-- Arguments grouped per key, in first-seen order: one command per user index.
local function grouped()
  local g = {order = {}, args = {}}
  function g.add(key, ...)
    local list = g.args[key]
    if not list then
      list = {}
      g.args[key] = list
      g.order[#g.order + 1] = key
    end
    for i = 1, select('#', ...) do list[#list + 1] = select(i, ...) end
  end
  return g
end
-- List ids in their users' indexes until their entries expire, trim passed
-- members, and never shorten an index's own TTL.
local function index(g, now, lease)
  for _, ukey in ipairs(g.order) do
    redis.call('ZADD', ukey, unpack(g.args[ukey]))
    redis.call('ZREMRANGEBYSCORE', ukey, '-inf', now)
    if redis.call('PTTL', ukey) < lease then redis.call('PEXPIRE', ukey, lease) end
  end
end
"""
# Batch scripts: KEYS holds, per registration, its c: key then (with a user) its
# u: key; ARGV a fixed head, then per registration its value and connection id.
_REGISTER: Final = r"""
-- ARGV head: lease ms, user key prefix. Newest wins; returns each replaced value
-- (false: none, or the same registration).
local lease, now, out, k, users = tonumber(ARGV[1]), now_ms(), {}, 1, grouped()
for i = 3, #ARGV, 2 do
  local value, cid = ARGV[i], ARGV[i + 1]
  local ckey, user = KEYS[k], user_of(value)
  k = k + 1
  local old = redis.call('GET', ckey)
  redis.call('SET', ckey, value, 'PX', lease)
  local old_user = old and user_of(old)
  if old_user and old_user ~= user then redis.call('ZREM', ARGV[2] .. old_user, cid) end
  if user then
    users.add(KEYS[k], now + lease, cid)
    k = k + 1
  end
  if old == value then out[#out + 1] = false else out[#out + 1] = old end
end
index(users, now, lease)
return out
"""
_ASSERT: Final = r"""
-- ARGV head: lease ms. Write back where absent or still this registration, never
-- over another. Returns per registration 0 renewed, 1 re-created, 2 replaced.
local lease, now, out, k, users = tonumber(ARGV[1]), now_ms(), {}, 1, grouped()
for i = 2, #ARGV, 2 do
  local value, cid = ARGV[i], ARGV[i + 1]
  local ckey, ukey = KEYS[k], nil
  k = k + 1
  if user_of(value) then
    ukey = KEYS[k]
    k = k + 1
  end
  local cur = redis.call('GET', ckey)
  if cur == value then
    redis.call('PEXPIRE', ckey, lease)
    out[#out + 1] = 0
  elseif cur then
    out[#out + 1] = 2
  else
    redis.call('SET', ckey, value, 'PX', lease)
    out[#out + 1] = 1
  end
  if ukey and out[#out] ~= 2 then users.add(ukey, now + lease, cid) end
end
index(users, now, lease)
return out
"""
_DELETE: Final = r"""
-- No ARGV head. Compare-and-delete; returns per registration 1 removed, 0 not current.
local out, k, gone = {}, 1, grouped()
for i = 1, #ARGV, 2 do
  local value, cid = ARGV[i], ARGV[i + 1]
  local ckey, ukey = KEYS[k], nil
  k = k + 1
  if user_of(value) then
    ukey = KEYS[k]
    k = k + 1
  end
  if redis.call('GET', ckey) == value then
    redis.call('DEL', ckey)
    if ukey then gone.add(ukey, cid) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for _, ukey in ipairs(gone.order) do redis.call('ZREM', ukey, unpack(gone.args[ukey])) end
return out
"""
_LEASE: Final = r"""
-- KEYS: node key, nodes index. ARGV: instance token, lease ms, node id.
-- Returns {0, remaining ms} when another instance holds it, {1, 0} renewed, {2, 0} taken.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[1])} end
local lease, now = tonumber(ARGV[2]), now_ms()
redis.call('SET', KEYS[1], ARGV[1], 'PX', lease)
redis.call('ZADD', KEYS[2], now + lease, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
if cur then return {1, 0} end
return {2, 0}
"""
_RELEASE: Final = r"""
-- KEYS: node key, nodes index. ARGV: instance token, node id.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script, and the SHA1 that EVALSHA names it by."""

    source: str
    sha: str

    @classmethod
    def of(cls, body: str) -> Script:
        source = _PRELUDE + body
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


SCRIPTS: Final = {
    name: Script.of(body)
    for name, body in [
        ("register", _REGISTER),
        ("assert", _ASSERT),
        ("delete", _DELETE),
        ("lease", _LEASE),
        ("release", _RELEASE),
    ]
}


def encode(registration: Registration) -> bytes:
    """The stored value of a registration (its connection id is in the key)."""
    text = registration.node + SEPARATOR + registration.token
    if registration.user is not None:
        text += SEPARATOR + registration.user
    return text.encode("utf-8", "surrogatepass")


def decode(connection_id: str, value: bytes) -> Registration | None:
    """The registration a stored value holds; None when wsgate did not write it."""
    try:
        node, token, *user = value.decode("utf-8", "surrogatepass").split(SEPARATOR, 2)
    except (UnicodeDecodeError, ValueError):
        return None  # not written by wsgate
    return Registration(connection_id, node, user[0] if user else None, token)
