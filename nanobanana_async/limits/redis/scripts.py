"""The Lua scripts behind RedisLimits: every change of state is one of them, run atomically.

Every script reads the clock of the Redis server (``TIME``), never a client's, so processes on
machines whose clocks disagree still agree on "now". Times are microseconds, written with
``%d`` (Lua numbers are doubles: ``tostring`` of a 16-digit integer would give ``1.7e+15``).

The keys of one namespace (``KEYS``) share one hash tag, ``{namespace}``, so every script
touches a single slot and works unchanged on Redis Cluster:

- ``state`` (hash): ``created``; ``next_us`` (the next start slot); ``cool_us`` (the end of the
  cool-down); ``spent``, ``uncertain`` (may have been spent: kept for an attempt whose answer
  was lost, or whose lease expired), ``reserved`` (held by attempts in flight), ``seq``; the
  caps last given, ``max_credits``, ``max_per_second`` and ``interval_us``.
- ``leases`` (sorted set): reservation id -> lease expiry (microseconds).
- ``costs`` (hash): reservation id -> credits reserved.

A lease that expires (its process was killed, or hung) moves its credits to ``uncertain``:
the server may have charged them, so they never go back to what is left.
"""

from __future__ import annotations

__all__ = ["BATCH", "RESET", "STATUS", "Admission"]


class Admission:
    """The first element of an admission's reply (``acquire`` in BATCH)."""

    ADMITTED = 1  # {1, wait_us, id}: start in wait_us (-1: no rate cap, start now); id ""
    # when no credits were reserved
    COOLING = 2  # {2, wait_us, ""}: a cool-down runs for wait_us more; nothing reserved
    NEVER = 3  # {3, left, ""}: the budget can never hold this cost
    WAIT = 4  # {4, left, ""}: it may, once reservations in flight settle
    LOST = 5  # {5, 0, ""}: the namespace's state is gone (Redis restarted without it)


_PRELUDE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local S, L, C = KEYS[1], KEYS[2], KEYS[3]
local function fmt(n) return string.format('%d', n) end
local function get(field) return tonumber(redis.call('HGET', S, field) or '0') end
-- Leases that expired: their holders died or hung. Kept as may-have-been-spent, never freed.
local function sweep()
  local expired = redis.call('ZRANGEBYSCORE', L, '-inf', fmt(now), 'LIMIT', 0, 500)
  if #expired == 0 then return end
  local moved = 0
  for _, id in ipairs(expired) do
    moved = moved + tonumber(redis.call('HGET', C, id) or '0')
  end
  redis.call('ZREM', L, unpack(expired))
  redis.call('HDEL', C, unpack(expired))
  redis.call('HINCRBY', S, 'uncertain', fmt(moved))
  redis.call('HINCRBY', S, 'reserved', fmt(-moved))
end
sweep()
"""

# acquire(A), A: cost, max_credits (-1: the namespace's), interval_us (0: the namespace's),
# lease_us, seen (1: this process has reserved here before), max_per_second (for the status
# view), lead_us (the slot is at least that far from now: time for the answer to arrive).
# Returns {Admission, wait_us or credits left, reservation id or ""}.
_ACQUIRE = (
    "local function acquire(A)"
    + r"""
local cost = tonumber(A[1])
local cap = tonumber(A[2])
local interval = tonumber(A[3])
if redis.call('HEXISTS', S, 'created') == 0 then
  if A[5] == '1' then return {5, 0, ''} end
  redis.call('HSET', S, 'created', fmt(now))
end
if cap >= 0 then
  redis.call('HSET', S, 'max_credits', fmt(cap))
else
  cap = tonumber(redis.call('HGET', S, 'max_credits') or '-1')
end
if interval > 0 then
  redis.call('HSET', S, 'interval_us', fmt(interval), 'max_per_second', A[6])
else
  interval = get('interval_us')
end
local cool = get('cool_us')
if cool > now then return {2, cool - now, ''} end
local reserve = cap >= 0 and cost > 0
if reserve then
  local committed = get('spent') + get('uncertain')
  local reserved = get('reserved')
  if committed + cost > cap then return {3, cap - committed - reserved, ''} end
  if committed + reserved + cost > cap then return {4, cap - committed - reserved, ''} end
end
local wait = -1
if interval > 0 then
  local slot = get('next_us')
  local earliest = now + tonumber(A[7])
  if slot < earliest then slot = earliest end
  wait = slot - now
  redis.call('HSET', S, 'next_us', fmt(slot + interval))
end
local id = ''
if reserve then
  id = tostring(redis.call('HINCRBY', S, 'seq', 1))
  redis.call('ZADD', L, fmt(now + wait + tonumber(A[4])), id)
  redis.call('HSET', C, id, fmt(cost))
  redis.call('HINCRBY', S, 'reserved', fmt(cost))
end
return {1, wait, id}
"""
    + "end\n"
)

# settle(A), A: id ("" for none), kind ("spent" | "keep" | "release"), credits spent,
# pause_us (0: none). Returns {settled (1; 2 when the lease had expired: already kept as
# may-have-been-spent; 0 nothing to settle), cool-down left in microseconds}.
_SETTLE = (
    "local function settle(A)"
    + r"""
local result = 0
local id = A[1]
if id ~= '' then
  local cost = redis.call('HGET', C, id)
  if cost then
    cost = tonumber(cost)
    redis.call('ZREM', L, id)
    redis.call('HDEL', C, id)
    redis.call('HINCRBY', S, 'reserved', fmt(-cost))
    if A[2] == 'spent' then
      redis.call('HINCRBY', S, 'spent', fmt(math.min(tonumber(A[3]), cost)))
    elseif A[2] == 'keep' then
      redis.call('HINCRBY', S, 'uncertain', fmt(cost))
    end
    result = 1
  else
    result = 2
  end
end
local cool = get('cool_us')
local pause = tonumber(A[4])
if pause > 0 and now + pause > cool then
  cool = now + pause
  redis.call('HSET', S, 'cool_us', fmt(cool))
end
local left = cool - now
if left < 0 then left = 0 end
return {result, left}
"""
    + "end\n"
)

# Several admissions and settlements in one call, in order, on one reading of the clock:
# ARGV = n, then per operation "a" and acquire's 7 arguments, or "s" and settle's 4.
# Returns the n replies. Concurrent calls of one process share a round trip this way.
BATCH = (
    _PRELUDE
    + _ACQUIRE
    + _SETTLE
    + r"""
local replies = {}
local at = 2
for k = 1, tonumber(ARGV[1]) do
  if ARGV[at] == 'a' then
    replies[k] = acquire({unpack(ARGV, at + 1, at + 7)})
    at = at + 8
  else
    replies[k] = settle({unpack(ARGV, at + 1, at + 4)})
    at = at + 5
  end
end
return replies
"""
)

# Returns {created (0/1), spent, uncertain, reserved, max_credits (-1: none),
# max_per_second ("" : none), cool-down left us, leases outstanding}.
STATUS = (
    _PRELUDE
    + r"""
local cool = get('cool_us') - now
if cool < 0 then cool = 0 end
return {
  redis.call('HEXISTS', S, 'created'), get('spent'), get('uncertain'), get('reserved'),
  tonumber(redis.call('HGET', S, 'max_credits') or '-1'),
  redis.call('HGET', S, 'max_per_second') or '', cool, redis.call('ZCARD', L)
}
"""
)

# A new ledger: credits, leases, start slots and cool-down are forgotten; the caps stay.
# Returns the number of reservations that were outstanding.
RESET = (
    _PRELUDE
    + r"""
local outstanding = redis.call('ZCARD', L)
local keep = redis.call('HMGET', S, 'max_credits', 'max_per_second', 'interval_us')
redis.call('DEL', S, L, C)
redis.call('HSET', S, 'created', fmt(now))
if keep[1] then redis.call('HSET', S, 'max_credits', keep[1]) end
if keep[2] then redis.call('HSET', S, 'max_per_second', keep[2]) end
if keep[3] then redis.call('HSET', S, 'interval_us', keep[3]) end
return outstanding
"""
)
