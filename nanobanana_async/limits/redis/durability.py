"""Whether a Redis keeps a credit ledger: persistence on, nothing evicted.

A budget is only as good as its ledger. A Redis without an append-only file forgets it on a
restart (RDB snapshots bring back an older copy: what was spent since is forgotten), and one
that evicts under ``maxmemory`` with an ``allkeys-*`` policy drops its keys when memory runs
short. Either would let the account be charged past the budget, so RedisLimits refuses a
budget on such a Redis unless told the risk is accepted (``allow_volatile``).

Read with ``CONFIG GET``; where CONFIG is not allowed (managed Redis often renames or forbids
it), from ``INFO persistence`` and ``INFO memory``; where neither answers, the Redis cannot be
checked and is refused the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from .resp import ReplyError

__all__ = ["Durability", "read_durability"]

# Policies that evict only keys with a time to live: the ledger's keys never have one.
_KEEPS_KEYS_WITHOUT_TTL = (
    "noeviction",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)

Call = Callable[..., Awaitable[Any]]


@attrs.frozen
class Durability:
    """What a Redis does to a ledger: ``problem`` is None when it keeps it."""

    appendonly: bool | None  # None: could not be read
    maxmemory: int | None
    policy: str | None
    source: str  # "CONFIG", "INFO", or why neither answered

    @property
    def problem(self) -> str | None:
        """Why a ledger may be lost there (one clause), or None."""
        if self.appendonly is None or self.policy is None or self.maxmemory is None:
            return f"could not check that Redis keeps it ({self.source})"
        if self.maxmemory and self.policy not in _KEEPS_KEYS_WITHOUT_TTL:
            return (
                f"maxmemory-policy is {self.policy} with maxmemory {self.maxmemory}: Redis "
                "evicts the ledger's keys when memory runs short"
            )
        if not self.appendonly:
            return (
                "appendonly is off: a restart forgets what was spent (or brings back an older "
                "snapshot)"
            )
        return None

    @property
    def fix(self) -> str:
        """What an operator can change so that the problem goes away."""
        if self.appendonly is None or self.policy is None or self.maxmemory is None:
            return "if it persists with an append-only file and never evicts, say so"
        if self.maxmemory and self.policy not in _KEEPS_KEYS_WITHOUT_TTL:
            return "set maxmemory-policy noeviction (or a volatile-* one)"
        return "turn on appendonly yes"


async def _config(call: Call) -> Durability:
    values: dict[str, str] = {}
    for name in ("appendonly", "maxmemory", "maxmemory-policy"):
        reply = await call("CONFIG", "GET", name)
        if len(reply) >= 2:
            values[str(reply[0])] = str(reply[1])
    appendonly = values.get("appendonly")
    maxmemory = values.get("maxmemory")
    return Durability(
        None if appendonly is None else appendonly == "yes",
        int(maxmemory) if maxmemory is not None and maxmemory.isdigit() else None,
        values.get("maxmemory-policy"),
        "CONFIG",
    )


def _info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


async def _info(call: Call) -> Durability:
    fields = _info_fields(await call("INFO", "persistence"))
    fields.update(_info_fields(await call("INFO", "memory")))
    aof = fields.get("aof_enabled")
    maxmemory = fields.get("maxmemory")
    return Durability(
        None if aof is None else aof == "1",
        int(maxmemory) if maxmemory is not None and maxmemory.isdigit() else None,
        fields.get("maxmemory_policy"),
        "INFO",
    )


async def read_durability(call: Call) -> Durability:
    """What the Redis behind ``call`` (one command, its reply) does to a ledger."""
    try:
        return await _config(call)
    except ReplyError as config_error:
        try:
            return await _info(call)
        except ReplyError as info_error:
            return Durability(
                None,
                None,
                None,
                f"CONFIG GET answered {str(config_error)!r}, INFO answered {str(info_error)!r}",
            )
