"""A batch's caps layered over its client's limits: one admission and one settlement per
attempt, both ledgers settled by the one money rule (``limits.base.ending``)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import httpx
import pytest

from nanobanana_async import (
    APIConnectionError,
    AsyncNanoBanana,
    BudgetExceededError,
    LimitsStatus,
    LocalLimits,
    MalformedResponseError,
    ServerError,
)
from nanobanana_async.limits import Caps, Limits, Permit, ending
from tests.support.clients import FAST

pytestmark = pytest.mark.anyio

KEY = "nb-layered-0123456789abcdef"


@pytest.mark.parametrize(
    ("spent", "outcome", "expected"),
    [
        (4, None, "spent"),
        (0, None, "spent"),  # generated nothing it could be charged for: spent nothing
        (None, None, "release"),  # admitted, never sent
        (None, ServerError("boom", status_code=500, code=500), "release"),
        (None, APIConnectionError("refused", may_have_been_charged=False), "release"),
        (None, APIConnectionError("reset after sending", may_have_been_charged=True), "keep"),
        (None, MalformedResponseError("cut body", status_code=200), "keep"),
        (None, asyncio.CancelledError(), "keep"),  # cut short: it may have reached the server
        (None, RuntimeError("unexpected"), "keep"),
    ],
)
def test_the_money_rule(spent: int | None, outcome: BaseException | None, expected: str) -> None:
    assert ending(spent, outcome) == expected


class Counting:
    """Limits that count what the retry loop asks of them, over LocalLimits."""

    def __init__(self, inner: LocalLimits) -> None:
        self.inner = inner
        self.acquired = 0
        self.settled = 0

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def acquire(self, cost: int) -> Permit:
        self.acquired += 1
        return await self.inner.acquire(cost)

    async def settle(self, permit: Permit, **how: Any) -> None:
        self.settled += 1
        await self.inner.settle(permit, **how)

    async def status(self) -> LimitsStatus:
        return await self.inner.status()


def lost_every_second_answer() -> httpx.MockTransport:
    seen: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        prompt = request.content.decode()
        seen[prompt] = seen.get(prompt, 0) + 1
        if seen[prompt] == 1 and len(seen) % 2:
            raise httpx.ReadError("connection reset after the request was sent")
        url = f"https://img.test/{len(seen)}.png"
        return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": url}})

    return httpx.MockTransport(answer)


async def test_each_attempt_is_admitted_and_settled_once_by_both_ledgers() -> None:
    client_limits = Counting(LocalLimits(max_credits=40))
    assert isinstance(client_limits, Limits)
    async with AsyncNanoBanana(
        KEY,
        base_url="https://api.test",
        transport=lost_every_second_answer(),
        retry_policy=FAST,
        retry_ambiguous=True,
        limits=client_limits,
    ) as client:
        report = await client.run_batch(
            [f"p {i}" for i in range(12)], concurrency=4, max_credits=30, max_per_second=500
        )
    attempts = sum(r.attempts for r in report.results)
    assert attempts > len(report.results)  # lost answers were retried
    assert client_limits.acquired == client_limits.settled == attempts
    # Both ledgers kept what the rule keeps: the client's agrees with the batch's report.
    status = await client_limits.status()
    assert status.reserved == 0
    assert (status.spent, status.uncertain) == (
        report.credits_spent,
        report.credits_may_have_been_spent,
    )
    assert report.credits_spent + report.credits_may_have_been_spent <= 30


async def test_a_held_reservation_is_used_by_the_first_attempt_and_given_back_unused() -> None:
    caps = Caps(max_credits=10, max_per_second=None)
    inner = LocalLimits()
    first, second = caps.over(inner, 4), caps.over(inner, 4)
    assert await first.hold()
    assert await second.hold()
    assert caps.budget is not None
    assert caps.budget.reserved == 8
    permit = await first.acquire(4)  # the held credits, not four more
    assert caps.budget.reserved == 8
    assert first.settle_now(permit, spent=4)
    second.release()
    assert (caps.budget.spent, caps.budget.reserved) == (4, 0)
    # A third's answer is lost: kept. A fourth can then never fit (4 spent + 4 kept of 10).
    third = caps.over(inner, 4)
    assert await third.hold()
    lost = APIConnectionError("reset after sending", may_have_been_charged=True)
    assert third.settle_now(await third.acquire(4), outcome=lost)
    with anyio.fail_after(5):
        assert not await caps.over(inner, 4).hold()
    assert (caps.budget.spent, caps.budget.uncertain, caps.budget.reserved) == (4, 4, 0)


async def test_a_retry_the_caps_cannot_hold_is_refused_before_anything_is_sent() -> None:
    caps = Caps(max_credits=6, max_per_second=None)
    layered = caps.over(LocalLimits(), 4)
    assert await layered.hold()
    permit = await layered.acquire(4)
    lost = APIConnectionError("reset after sending", may_have_been_charged=True)
    assert layered.settle_now(permit, outcome=lost)  # kept: 4 may have been spent
    with pytest.raises(BudgetExceededError, match="no room for another attempt") as info:
        await layered.acquire(4)
    assert info.value is layered.refused
    assert caps.budget is not None
    assert (caps.budget.uncertain, caps.budget.reserved) == (4, 0)


async def test_the_inner_limits_admit_inside_the_caps_start_slot() -> None:
    # The caps' slot is held while the inner limits admit: a start the inner limits make wait
    # is not overtaken by a later one under the caps.
    order: list[str] = []
    release = anyio.Event()

    class Slow(LocalLimits):
        async def acquire(self, cost: int) -> Permit:
            order.append("inner")
            if len(order) == 1:
                await release.wait()
            return await super().acquire(cost)

    caps = Caps(max_credits=None, max_per_second=1000)
    inner = Slow()

    async def attempt(name: str) -> None:
        await caps.over(inner, 0).acquire(0)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt, "first")
        await anyio.sleep(0.05)
        tg.start_soon(attempt, "second")
        await anyio.sleep(0.05)
        assert order == ["inner"]  # the second waits for the slot the first holds
        release.set()
    assert order == ["inner", "first", "inner", "second"]


async def test_a_cancelled_admission_gives_back_what_it_reserved() -> None:
    caps = Caps(max_credits=8, max_per_second=None)

    class Never(LocalLimits):
        async def acquire(self, cost: int) -> Permit:
            await anyio.sleep_forever()
            raise AssertionError

    layered = caps.over(Never(), 4)
    assert await layered.hold()
    with anyio.move_on_after(0.05):
        await layered.acquire(4)
    layered.release()  # nothing left to give back: the admission gave it back itself
    assert caps.budget is not None
    assert caps.budget.reserved == 0
