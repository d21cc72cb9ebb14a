"""What the limits tests share: the namespace's raw state in Redis, clients, windows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import coredis

from nanobanana_async import AsyncNanoBanana
from nanobanana_async.emulator import Emulator
from nanobanana_async.limits import Limits

KEY = "nb-limits-test-key-0123456789"


async def redis_state(url: str, namespace: str) -> dict[str, Any]:
    """The namespace's keys as Redis holds them (read without the SDK)."""
    tag = "nanobanana:{" + namespace + "}"
    async with coredis.Redis.from_url(url, decode_responses=True) as redis:
        state = await redis.hgetall(f"{tag}:state")
        leases = await redis.zrange(f"{tag}:leases", 0, -1)
        costs = await redis.hgetall(f"{tag}:costs")
        keys = [k async for k in redis.scan_iter(match=f"*{namespace}*")]
    return {"state": dict(state), "leases": list(leases), "costs": dict(costs), "keys": keys}


def client(emulator: Emulator, limits: Limits | None, **kwargs: Any) -> AsyncNanoBanana:
    """A client of ``emulator`` (in-process) admitted by ``limits``."""
    return AsyncNanoBanana(
        KEY,
        base_url="http://127.0.0.1:9",
        transport=emulator.transport(),
        limits=limits,
        **kwargs,
    )


def most_in_a_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most of ``times`` that fall in any half-open window of ``window`` seconds."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(ordered):
        while t - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best
