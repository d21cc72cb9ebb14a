"""LocalLimits: the limits of one process, the client's default."""

from __future__ import annotations

from ..errors import BudgetExceededError
from ..validation import positive, whole
from .base import LimitsStatus, Permit
from .budget import CreditBudget
from .cooldown import Cooldown
from .spacing import RateLimiter

__all__ = ["LocalLimits", "check_caps"]


def check_caps(max_per_second: float | None, max_credits: int | None) -> None:
    """Refuse caps that are not a positive rate or a whole number of credits >= 0."""
    positive(max_per_second, "max_per_second", none=True)
    whole(max_credits, "max_credits", minimum=0, none=True)


class LocalLimits:
    """Limits kept in this process: the default of every client.

    Always a 429 cool-down (a ``Retry-After`` pauses every request of the clients sharing this
    object); optionally ``max_per_second`` (request starts of every call, spaced evenly, as a
    batch's ``max_per_second``) and ``max_credits`` (a budget over every call, reserved per
    attempt as a batch's ``max_credits``). Belongs to the event loop that first uses it.
    Processes do not see each other's: :class:`~nanobanana_async.RedisLimits` shares them.
    """

    def __init__(
        self, *, max_per_second: float | None = None, max_credits: int | None = None
    ) -> None:
        check_caps(max_per_second, max_credits)
        self.max_per_second = max_per_second
        self.max_credits = max_credits
        self.cooldown = Cooldown()
        self._rate = RateLimiter(max_per_second) if max_per_second is not None else None
        self._budget = CreditBudget(max_credits) if max_credits is not None else None

    def __repr__(self) -> str:
        return (
            f"LocalLimits(max_per_second={self.max_per_second!r}, max_credits={self.max_credits!r})"
        )

    async def open(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to close."""

    async def acquire(self, cost: int) -> Permit:
        """Wait out the cool-down, reserve ``cost`` under ``max_credits``, take a start."""
        waited = await self.cooldown.wait()
        budget = self._budget
        held = 0
        if budget is not None and cost > 0:
            if not await budget.reserve(cost):
                raise BudgetExceededError(
                    f"max_credits={budget.limit} of the client's limits has no room for "
                    f"{cost} credits ({budget.left} left, {budget.committed} spent or "
                    "may have been): nothing was sent"
                )
            held = cost
        try:
            if self._rate is not None:
                await self._rate.acquire()
        except BaseException:
            if budget is not None and held:
                budget.settle(held)
            raise
        return Permit(held, cooldown=waited)

    def acquire_now(self, cost: int) -> Permit | None:
        """A permit at once when admitting ``cost`` needs no wait and no reservation (no
        cool-down in force, no ``max_credits``, no ``max_per_second``); None otherwise, and
        then :meth:`acquire` decides. The retry loop's way around an await per attempt."""
        if self._rate is not None or (self._budget is not None and cost > 0):
            return None
        if self.cooldown.paused():
            return None
        return Permit(0)

    async def settle(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> None:
        """End ``permit``'s attempt (see :meth:`Limits.settle`)."""
        self.settle_now(permit, spent=spent, outcome=outcome, pause=pause)

    def settle_now(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> bool:
        """:meth:`settle`, which awaits nothing here: callable where awaiting is not wanted
        (always True: settled)."""
        if pause is not None and pause > 0:
            self.cooldown.pause(pause)
        if permit.settled:
            return True
        permit.settled = True
        if self._budget is not None and permit.cost:
            self._budget.end_attempt(permit.cost, spent=spent, outcome=outcome)
        return True

    async def status(self) -> LimitsStatus:
        """The caps, the credits by state and the cool-down left."""
        budget = self._budget
        return LimitsStatus(
            max_per_second=self.max_per_second,
            max_credits=self.max_credits,
            spent=budget.spent if budget else 0,
            uncertain=budget.uncertain if budget else 0,
            reserved=budget.reserved if budget else 0,
            cooldown=self.cooldown.remaining(),
        )
