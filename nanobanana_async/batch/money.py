"""A job's money: reserved before an attempt, then spent, released or kept as may-have-been-spent.

One rule decides what happens to an attempt's reservation (``errors.may_have_charged``): anything
after which the server may have charged keeps it. The budget is therefore never above
``max_credits`` whatever the server did with a request whose answer was lost, at any
concurrency, with or without retries of such requests (each attempt holds its own
reservation).
"""

from __future__ import annotations

from ..errors import may_have_charged
from ..limits.budget import CreditBudget

__all__ = ["CreditBudget", "JobMoney", "NoRoomForAttempt"]


class NoRoomForAttempt(Exception):
    """Raised before a retry when ``max_credits`` can never hold another attempt.

    Not an SDK error, so the retry loop does not treat it as an attempt's failure.
    """


class JobMoney:
    """One job's credits: one reservation per attempt that may be charged.

    ``reserve`` before an attempt (the first one is taken before the job is dispatched, so a
    job that can never fit is skipped unsent), then exactly one of :meth:`attempt_failed`
    (the attempt's reservation is kept or released per :func:`may_have_charged`),
    :meth:`succeeded`, or :meth:`unused` (reserved, never sent). ``spent`` and ``uncertain``
    add up what this job spent and what it may have spent.
    """

    __slots__ = ("_budget", "_held", "cost", "spent", "uncertain")

    def __init__(self, budget: CreditBudget | None, cost: int) -> None:
        self._budget = budget
        self._held = False
        self.cost = cost
        self.spent = 0
        self.uncertain = 0

    async def reserve(self) -> bool:
        """Hold a reservation for the next attempt; False when the budget can never fit one."""
        if self._held:
            return True
        if self._budget is not None and not await self._budget.reserve(self.cost):
            return False
        self._held = True
        return True

    def _settle(self, *, spent: int = 0, uncertain: int = 0) -> None:
        if self._held:
            self._held = False
            if self._budget is not None:
                self._budget.settle(self.cost, spent=spent, uncertain=uncertain)

    def attempt_failed(self, outcome: BaseException) -> None:
        """The attempt holding the reservation ended with ``outcome``."""
        if may_have_charged(outcome):
            self.uncertain += self.cost
            self._settle(uncertain=self.cost)
        else:
            self._settle()

    def succeeded(self, credits: int) -> None:
        """The attempt holding the reservation generated, costing ``credits`` (at most
        ``cost``: a partial answer is charged per image returned)."""
        self.spent += credits
        self._settle(spent=credits)

    def unused(self) -> None:
        """Release a reservation no attempt was sent with."""
        self._settle()
