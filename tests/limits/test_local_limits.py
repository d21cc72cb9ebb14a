"""LocalLimits, the default: every call of a client is admitted and settled by them."""

from __future__ import annotations

import anyio
import pytest

from nanobanana_async import (
    BudgetExceededError,
    InvalidRequestError,
    LocalLimits,
    RateLimitError,
)
from nanobanana_async.emulator import Emulator, Faults

from .helpers import client, most_in_a_window

pytestmark = pytest.mark.anyio


async def test_the_default_is_local_limits_without_caps() -> None:
    async with client(Emulator(), None) as nb:
        assert isinstance(nb.limits, LocalLimits)
        await nb.generate("a fox")
        status = await nb.limits.status()
        assert (status.max_credits, status.max_per_second, status.spent) == (None, None, 0)


async def test_client_max_credits_covers_every_call() -> None:
    emulator = Emulator()
    limits = LocalLimits(max_credits=5)
    async with client(emulator, limits) as nb:
        await nb.generate("one")  # 2 credits
        report = await nb.run_batch(["two", "three", "four"], concurrency=3)
        assert (report.succeeded, report.skipped) == (1, 2)
        assert all("max_credits=5" in (r.reason or "") for r in report.results if not r.ok)
        with pytest.raises(BudgetExceededError):
            await nb.generate("five")
    assert emulator.stats.credits_charged == 4
    status = await limits.status()
    assert (status.spent, status.reserved, status.left) == (4, 0, 1)


async def test_client_max_per_second_spaces_every_call() -> None:
    emulator = Emulator()
    async with (
        client(emulator, LocalLimits(max_per_second=10)) as nb,
        anyio.create_task_group() as tg,
    ):
        for i in range(6):
            tg.start_soon(nb.generate, f"single {i}")
        tg.start_soon(nb.run_batch, [f"batch {i}" for i in range(8)])
    assert emulator.stats.generations == 14
    assert most_in_a_window(emulator.stats.request_start_times) <= 10


async def test_a_batch_cap_holds_inside_the_client_cap() -> None:
    emulator = Emulator()
    async with client(emulator, LocalLimits(max_per_second=20)) as nb:
        await nb.run_batch([f"p{i}" for i in range(8)], concurrency=8, max_per_second=5)
    assert most_in_a_window(emulator.stats.request_start_times) <= 5


async def test_a_429_pauses_the_other_calls_of_the_client() -> None:
    emulator = Emulator(faults=Faults(rate_limit_rate=1.0, retry_after=0.5))
    limits = LocalLimits()
    async with client(emulator, limits, max_retries=0) as nb:
        with pytest.raises(RateLimitError):
            await nb.generate("told to wait")
        assert limits.cooldown.remaining() > 0.3
        emulator.faults = Faults()
        sent = len(emulator.stats.request_start_times)
        async with anyio.create_task_group() as tg:
            tg.start_soon(nb.generate, "waits")
            await anyio.sleep(0.2)
            assert len(emulator.stats.request_start_times) == sent  # still paused
    assert emulator.stats.generations == 1


def test_bad_caps_and_limits_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="max_per_second"):
        LocalLimits(max_per_second=0)
    with pytest.raises(InvalidRequestError, match="max_credits"):
        LocalLimits(max_credits=-1)
    with pytest.raises(InvalidRequestError, match="limits must be"):
        client(Emulator(), "redis://x")  # type: ignore[arg-type]
