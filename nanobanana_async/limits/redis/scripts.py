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
- ``leases`` (sorted set): reservation id -> lease expiry (microseconds). An id is
  ``<ledger>:<seq>:<credits reserved>``: made by the scripts, never by a client.

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
local S, L = KEYS[1], KEYS[2]
local function fmt(n) return string.format('%d', n) end
local function get(field) return tonumber(redis.call('HGET', S, field) or '0') end
local function cost_of(id) return tonumber(string.match(id, ':(%d+)$')) end
-- Leases that expired: their holders died or hung. Kept as may-have-been-spent, never freed.
local function sweep()
  local expired = redis.call('ZRANGEBYSCORE', L, '-inf', fmt(now), 'LIMIT', 0, 500)
  if #expired == 0 then return end
  local moved = 0
  for _, id in ipairs(expired) do moved = moved + cost_of(id) end
  redis.call('ZREM', L, unpack(expired))
  redis.call('HINCRBY', S, 'uncertain', fmt(moved))
  redis.call('HINCRBY', S, 'reserved', fmt(-moved))
end
sweep()
"""

# The operations of one process, as BATCH runs them. What is the same for all of them comes
# once, in the call's header (H): the ledger the process uses ("" for none yet: then the
# namespace's, if any, applies), the highest reservation number it saw there, its
# interval_us (0: the namespace's), lease_us and max_per_second (for the status view).
_OPERATIONS = r"""
local H_LEDGER, H_SEQ = ARGV[2], tonumber(ARGV[3])
local H_INTERVAL, H_LEASE, H_PER_SECOND = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

-- acquire: cost, lead_us (the slot is at least that far from now: time for the answer to
-- arrive). Returns {Admission, wait_us or credits left, reservation id or ""}.
local function acquire(cost, lead)
  local f = redis.call('HMGET', S, 'ledger', 'seq', 'interval_us', 'cool_us', 'max_credits',
    'spent', 'uncertain', 'reserved', 'next_us')
  local ledger, seq = f[1], tonumber(f[2] or '0')
  if H_LEDGER ~= '' then
    if ledger ~= H_LEDGER then return {5, 0, ''} end
    if seq < H_SEQ then return {5, 1, ''} end
  end
  local interval = tonumber(f[3] or '0')
  if H_INTERVAL > 0 and H_INTERVAL ~= interval then
    interval = H_INTERVAL
    redis.call('HSET', S, 'interval_us', fmt(interval), 'max_per_second', H_PER_SECOND)
  end
  local cool = tonumber(f[4] or '0')
  if cool > now then return {2, cool - now, ''} end
  local reserve = ledger and cost > 0
  local reserved = tonumber(f[8] or '0')
  if reserve then
    local cap = tonumber(f[5] or '0')
    local committed = tonumber(f[6] or '0') + tonumber(f[7] or '0')
    if committed + cost > cap then return {3, cap - committed - reserved, ''} end
    if committed + reserved + cost > cap then return {4, cap - committed - reserved, ''} end
  end
  local wait = -1
  if interval > 0 then
    local slot = tonumber(f[9] or '0')
    if slot < now + lead then slot = now + lead end
    wait = slot - now
    redis.call('HSET', S, 'next_us', fmt(slot + interval))
  end
  if not reserve then return {1, wait, ''} end
  seq = seq + 1
  local id = ledger .. ':' .. fmt(seq) .. ':' .. fmt(cost)
  redis.call('HSET', S, 'seq', fmt(seq), 'reserved', fmt(reserved + cost))
  redis.call('ZADD', L, fmt(now + math.max(wait, 0) + H_LEASE), id)
  return {1, wait, id}
end

-- settle: id ("" for none), kind ("spent" | "keep" | "release"), credits spent, pause_us
-- (0: none). Returns {settled (1; 2 when there was nothing to settle: its lease had
-- expired, already kept as may-have-been-spent, or its ledger was replaced; 0 no id),
-- cool-down left in microseconds}.
local function settle(id, kind, spent, pause)
  local result = 0
  if id ~= '' then
    if redis.call('ZREM', L, id) == 1 then
      local cost = cost_of(id)
      redis.call('HINCRBY', S, 'reserved', fmt(-cost))
      if kind == 'spent' then
        redis.call('HINCRBY', S, 'spent', fmt(math.min(spent, cost)))
      elseif kind == 'keep' then
        redis.call('HINCRBY', S, 'uncertain', fmt(cost))
      end
      result = 1
    else
      result = 2
    end
  end
  local cool = get('cool_us')
  if pause > 0 and now + pause > cool then
    cool = now + pause
    redis.call('HSET', S, 'cool_us', fmt(cool))
  end
  local left = cool - now
  if left < 0 then left = 0 end
  return {result, left}
end

-- renew: id. A live holder's lease runs lease_us from now (never shorter than it was).
-- Returns 1, or 0 when the lease had expired or was settled.
local function renew(id)
  local expiry = redis.call('ZSCORE', L, id)
  if not expiry or tonumber(expiry) <= now then return 0 end
  redis.call('ZADD', L, 'GT', fmt(now + H_LEASE), id)
  return 1
end

-- cooling: the cool-down left in microseconds (0: none).
local function cooling()
  local left = get('cool_us') - now
  if left < 0 then left = 0 end
  return left
end
"""

# Several operations in one call, in order, on one reading of the clock: ARGV = n, the
# header (5 values, above), then per operation its letter and arguments: "a" cost lead_us,
# "s" id kind spent pause_us, "r" id, "c". Returns the n replies. Concurrent calls of one
# process share a round trip this way.
BATCH = (
    _PRELUDE
    + _OPERATIONS
    + r"""
local replies = {}
local at = 7
for k = 1, tonumber(ARGV[1]) do
  local op = ARGV[at]
  if op == 'a' then
    replies[k] = acquire(tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]))
    at = at + 3
  elseif op == 's' then
    replies[k] = settle(ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]),
      tonumber(ARGV[at + 4]))
    at = at + 5
  elseif op == 'r' then
    replies[k] = renew(ARGV[at + 1])
    at = at + 2
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
redis.call('DEL', L)
redis.call('HDEL', S, 'spent', 'uncertain', 'reserved', 'seq', 'cool_us', 'next_us')
redis.call('HSET', S, 'ledger', ARGV[1], 'max_credits', fmt(cap), 'created', fmt(now))
if tonumber(ARGV[4]) > 0 then
  redis.call('HSET', S, 'interval_us', ARGV[4], 'max_per_second', ARGV[5])
end
return {1, ARGV[1], outstanding}
"""
)
