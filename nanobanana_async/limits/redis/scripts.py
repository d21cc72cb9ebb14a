"""The Lua scripts behind RedisLimits: every change of state is one of them, run atomically.

Every script reads the clock of the Redis server (``TIME``), never a client's, so processes on
machines whose clocks disagree still agree on "now". Times are microseconds, written with
``%d`` (Lua numbers are doubles: ``tostring`` of a 16-digit integer would give ``1.7e+15``).

The keys of one namespace (``KEYS``) share one hash tag, ``{namespace}``, so every script
touches a single slot and works unchanged on Redis Cluster:

- ``state`` (hash): the credit ledger, if one was created: ``ledger`` (its identity, a random
  id), ``created``, ``max_credits``, ``spent``, ``uncertain`` (may have been spent: kept for an
  attempt whose answer was lost, or whose lease expired), ``reserved`` (held by attempts in
  flight), ``seq`` (reservations made); and the rate and the cool-down, which need no ledger:
  ``next_us`` (the next start slot), ``interval_us`` and ``max_per_second`` (the last given),
  ``cool_us`` (the end of the cool-down).
- ``leases`` (sorted set): reservation id -> lease expiry (microseconds).
- ``costs`` (hash): reservation id -> credits reserved.

A ledger is only ever made by ``CREATE``: an admission that expects a ledger and finds none,
or another one, is refused (``LOST``), so a ledger that Redis lost is never taken for a new
one. Reservation ids carry the ledger's identity: a settlement meant for a ledger that was
replaced finds nothing to settle. A lease that expires (its process was killed, or hung
longer than the lease) moves its credits to ``uncertain``: the server may have charged them,
so they never go back to what is left. Live holders renew their leases (``renew``).
"""

from __future__ import annotations

__all__ = ["BATCH", "CREATE", "VIEW", "Admission"]


class Admission:
    """The first element of an admission's reply (``acquire`` in BATCH)."""

    ADMITTED = 1  # {1, wait_us, id}: start in wait_us (-1: no rate cap, start now); id ""
    # when no credits were reserved, else "<ledger>:<seq>"
    COOLING = 2  # {2, wait_us, ""}: a cool-down runs for wait_us more; nothing reserved
    NEVER = 3  # {3, left, ""}: the budget can never hold this cost
    WAIT = 4  # {4, left, ""}: it may, once reservations in flight settle
    LOST = 5  # {5, 0 | 1, ""}: the ledger this process uses is gone or replaced (0), or
    # went back in time (1: restored from an older copy)


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

# acquire(A), A: cost, ledger (the id this process uses, "" for none yet: then the
# namespace's, if any, applies), seq (the highest this process saw), interval_us (0: the
# namespace's), lease_us, max_per_second (for the status view), lead_us (the slot is at
# least that far from now: time for the answer to arrive).
# Returns {Admission, wait_us or credits left, reservation id or ""}.
_ACQUIRE = (
    "local function acquire(A)"
    + r"""
local cost = tonumber(A[1])
local ledger = redis.call('HGET', S, 'ledger')
if A[2] ~= '' then
  if ledger ~= A[2] then return {5, 0, ''} end
  if get('seq') < tonumber(A[3]) then return {5, 1, ''} end
end
local interval = tonumber(A[4])
if interval > 0 then
  redis.call('HSET', S, 'interval_us', fmt(interval), 'max_per_second', A[6])
else
  interval = get('interval_us')
end
local cool = get('cool_us')
if cool > now then return {2, cool - now, ''} end
local reserve = ledger and cost > 0
if reserve then
  local cap = get('max_credits')
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
  id = ledger .. ':' .. fmt(redis.call('HINCRBY', S, 'seq', 1))
  redis.call('ZADD', L, fmt(now + math.max(wait, 0) + tonumber(A[5])), id)
  redis.call('HSET', C, id, fmt(cost))
  redis.call('HINCRBY', S, 'reserved', fmt(cost))
end
return {1, wait, id}
"""
    + "end\n"
)

# settle(A), A: id ("" for none), kind ("spent" | "keep" | "release"), credits spent,
# pause_us (0: none). Returns {settled (1; 2 when there was nothing to settle: its lease had
# expired, already kept as may-have-been-spent, or its ledger was replaced; 0 no id),
# cool-down left in microseconds}.
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

# renew(A), A: id, lease_us. A live holder's lease runs lease_us from now (never shorter than
# it was). Returns 1, or 0 when the lease had expired or was settled.
_RENEW = (
    "local function renew(A)"
    + r"""
local expiry = redis.call('ZSCORE', L, A[1])
if not expiry or tonumber(expiry) <= now then return 0 end
redis.call('ZADD', L, 'GT', fmt(now + tonumber(A[2])), A[1])
return 1
"""
    + "end\n"
)

# cooling(): the cool-down left in microseconds (0: none).
_COOLING = (
    "local function cooling()"
    + r"""
local left = get('cool_us') - now
if left < 0 then left = 0 end
return left
"""
    + "end\n"
)

# Several operations in one call, in order, on one reading of the clock: ARGV = n, then per
# operation its letter and arguments: "a" and acquire's 7, "s" and settle's 4, "r" and
# renew's 2, "c" (cooling) and none. Returns the n replies. Concurrent calls of one process
# share a round trip this way.
ARITY = {"a": 7, "s": 4, "r": 2, "c": 0}
BATCH = (
    _PRELUDE
    + _ACQUIRE
    + _SETTLE
    + _RENEW
    + _COOLING
    + r"""
local replies = {}
local at = 2
for k = 1, tonumber(ARGV[1]) do
  local op = ARGV[at]
  if op == 'a' then
    replies[k] = acquire({unpack(ARGV, at + 1, at + 7)})
    at = at + 8
  elseif op == 's' then
    replies[k] = settle({unpack(ARGV, at + 1, at + 4)})
    at = at + 5
  elseif op == 'r' then
    replies[k] = renew({ARGV[at + 1], ARGV[at + 2]})
    at = at + 3
  else
    replies[k] = cooling()
    at = at + 1
  end
end
return replies
"""
)

# Returns {ledger id ("": none), max_credits (-1: none), spent, uncertain, reserved,
# max_per_second ("": none), cool-down left us, leases outstanding, seq}.
VIEW = (
    _PRELUDE
    + r"""
local cool = get('cool_us') - now
if cool < 0 then cool = 0 end
local ledger = redis.call('HGET', S, 'ledger')
return {
  ledger or '', ledger and get('max_credits') or -1, get('spent'), get('uncertain'),
  get('reserved'), redis.call('HGET', S, 'max_per_second') or '', cool,
  redis.call('ZCARD', L), get('seq')
}
"""
)

# A new ledger. ARGV: its id, max_credits (-1: the current ledger's), replace ("1": a ledger
# that exists is replaced; its reservations are dropped), interval_us and max_per_second (0
# and "": leave the rate as it is). Credits, leases, start slots and the cool-down start
# afresh. Returns {1, id, reservations dropped}, or {0, the existing id, 0} when a ledger
# exists and replace is not "1", or {0, "", 0} when max_credits is -1 and none exists.
CREATE = (
    _PRELUDE
    + r"""
local ledger = redis.call('HGET', S, 'ledger')
if ledger and ARGV[3] ~= '1' then return {0, ledger, 0} end
local cap = tonumber(ARGV[2])
if cap < 0 then
  if not ledger then return {0, '', 0} end
  cap = get('max_credits')
end
local outstanding = redis.call('ZCARD', L)
redis.call('DEL', L, C)
redis.call('HDEL', S, 'spent', 'uncertain', 'reserved', 'seq', 'cool_us', 'next_us')
redis.call('HSET', S, 'ledger', ARGV[1], 'max_credits', fmt(cap), 'created', fmt(now))
if tonumber(ARGV[4]) > 0 then
  redis.call('HSET', S, 'interval_us', ARGV[4], 'max_per_second', ARGV[5])
end
return {1, ARGV[1], outstanding}
"""
)
