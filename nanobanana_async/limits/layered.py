"""Caps layered over other limits: a batch's ``max_credits`` and ``max_per_second`` over its
client's limits.

As aiometer composes ``max_at_once`` and ``max_per_second`` as meters an item passes in turn,
an attempt passes the outer caps (its credits reserved, then a start slot) and, holding that
slot, the inner limits; it is settled by both, under the one money rule
(:func:`~nanobanana_async.limits.base.ending`). The retry loop sees one :class:`Limits`: one
admission and one settlement per attempt, however many ledgers stand behind it.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..errors import BudgetExceededError
from ..validation import positive, whole
from .base import Limits, Permit
from .budget import CreditBudget
from .spacing import RateLimiter

__all__ = ["Caps", "Layered", "LayeredPermit"]


class Caps:
    """A credit budget and a rate of request starts, shared by every job of one batch.

    Local to the batch (one process, one run): what the caps of other processes or of the
    whole account are is the inner limits' business (:class:`~nanobanana_async.RedisLimits`).
    """

    __slots__ = ("budget", "rate")

    def __init__(self, *, max_credits: int | None, max_per_second: float | None) -> None:
        whole(max_credits, "max_credits", minimum=0, none=True)
        positive(max_per_second, "max_per_second", none=True)
        self.budget = CreditBudget(max_credits) if max_credits is not None else None
        self.rate = RateLimiter(max_per_second) if max_per_second is not None else None

    def over(self, inner: Limits, cost: int) -> Layered:
        """The limits of one job costing ``cost`` per attempt: these caps over ``inner``."""
        return Layered(self, inner, cost)


@attrs.define(eq=False, slots=True)
class LayeredPermit(Permit):
    """An attempt admitted by :class:`Layered`: ``cost`` reserved under the caps, and the
    inner limits' own permit."""

    inner: Permit = attrs.field(kw_only=True)


class Layered:
    """The :class:`Limits` one job's attempts are admitted by: :class:`Caps` over ``inner``.

    :meth:`hold` reserves the first attempt's credits before the job is dispatched, so a job
    that can never fit is skipped unsent; its first :meth:`acquire` uses them. ``refused`` is
    the error of a later attempt the caps had no room for (the caller words it for the job).
    """

    __slots__ = ("_caps", "_cost", "_held", "_inner", "_inner_now", "refused")

    def __init__(self, caps: Caps, inner: Limits, cost: int) -> None:
        self._caps = caps
        self._inner = inner
        self._cost = cost
        self._held = False
        # Inner limits that settle without awaiting (LocalLimits always, RedisLimits mostly).
        self._inner_now: Callable[..., bool] | None = getattr(inner, "settle_now", None)
        self.refused: BudgetExceededError | None = None

    async def hold(self) -> bool:
        """Reserve the next attempt's credits now; False (nothing held) when they can never
        fit. Waits while reservations in flight might be released."""
        budget = self._caps.budget
        if budget is None or not self._cost or self._held:
            return True
        self._held = await budget.reserve(self._cost)
        return self._held

    def release(self) -> None:
        """Give back what :meth:`hold` reserved if no attempt used it."""
        if self._held:
            self._held = False
            assert self._caps.budget is not None
            self._caps.budget.settle(self._cost)

    async def open(self) -> None:
        """Nothing to open: the inner limits are their owner's to open."""

    async def aclose(self) -> None:
        """Nothing to close: the inner limits are their owner's to close."""

    async def acquire(self, cost: int) -> Permit:
        """Reserve ``cost`` under the caps (what :meth:`hold` holds, else now), then take a start
        slot and, holding it, be admitted by the inner limits."""
        budget, rate = self._caps.budget, self._caps.rate
        held = 0
        if budget is not None and cost:
            if self._held and cost == self._cost:
                self._held = False  # reserved by hold(), before the job was dispatched
            else:
                self.release()
                if not await budget.reserve(cost):
                    self.refused = BudgetExceededError(
                        f"max_credits={budget.limit} has no room for another attempt "
                        f"({cost} credits; {budget.left} left)"
                    )
                    raise self.refused
            held = cost
        try:
            if rate is None:
                inner = await self._inner.acquire(cost)
            else:
                admitted: list[Permit] = []

                async def admit() -> None:
                    admitted.append(await self._inner.acquire(cost))

                # The inner limits admit the attempt inside this start slot: the caps' rate
                # holds inside theirs, and a later start never overtakes this one.
                await rate.acquire(admit)
                inner = admitted[0]
        except BaseException:
            if held:
                assert budget is not None
                budget.settle(held)
            raise
        return LayeredPermit(held, cooldown=inner.cooldown, inner=inner)

    def _settle_caps(
        self, permit: Permit, spent: int | None, outcome: BaseException | None
    ) -> None:
        if permit.settled:
            return
        permit.settled = True
        budget = self._caps.budget
        if budget is not None and permit.cost:
            budget.end_attempt(permit.cost, spent=spent, outcome=outcome)

    def settle_now(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> bool:
        """Settle the caps at once, and the inner limits too when they can without awaiting
        (True); False: :meth:`settle` finishes the inner part."""
        self._settle_caps(permit, spent, outcome)
        inner = _inner_permit(permit)
        now = self._inner_now
        return now is not None and bool(now(inner, spent=spent, outcome=outcome, pause=pause))

    async def settle(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> None:
        """End ``permit``'s attempt in the caps and in the inner limits (see
        :meth:`Limits.settle`)."""
        self._settle_caps(permit, spent, outcome)
        await self._inner.settle(_inner_permit(permit), spent=spent, outcome=outcome, pause=pause)


def _inner_permit(permit: Permit) -> Permit:
    assert isinstance(permit, LayeredPermit)
    return permit.inner
