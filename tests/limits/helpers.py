"""What the limits tests share: the namespace's raw state in Redis, ledgers, clients,
windows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from nanobanana_async import AsyncNanoBanana, RedisLimits
from nanobanana_async.emulator import Emulator
from nanobanana_async.limits import Limits
from tests.support.redis_server import RedisServer

KEY = "nb-limits-test-key-0123456789"


def _pairs(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line]
    return dict(zip(lines[::2], lines[1::2], strict=True))


async def redis_state(server: RedisServer, namespace: str) -> dict[str, Any]:
    """The namespace's keys as Redis holds them (read with redis-cli, without the SDK)."""
    tag = "nanobanana:{" + namespace + "}"

    def read() -> dict[str, Any]:
        return {
            "state": _pairs(server.cli("HGETALL", f"{tag}:state")),
            "leases": server.cli("ZRANGE", f"{tag}:leases", "0", "-1").split(),
            "keys": server.cli("--scan", "--pattern", f"*{namespace}*").split(),
        }

    return await anyio.to_thread.run_sync(read)


async def ledger(url: str, namespace: str, max_credits: int, **options: Any) -> RedisLimits:
    """Create the namespace's credit ledger (as an operator does once) and return limits
    using it (not open)."""
    limits = RedisLimits(url, namespace=namespace, max_credits=max_credits, **options)
    await limits.create()
    return limits


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
