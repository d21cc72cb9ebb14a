"""A credit budget in one process: reserved before an attempt, then spent, kept or released."""

from __future__ import annotations

import anyio

from .base import ending

__all__ = ["CreditBudget"]


class CreditBudget:
    """A ``max_credits``: spent + may-have-been-spent + reserved never exceeds it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0
        self.uncertain = 0
        self.reserved = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def committed(self) -> int:
        """Credits that may be gone: spent, or kept for an answer that was lost."""
        return self.spent + self.uncertain

    @property
    def left(self) -> int:
        """Credits neither committed nor reserved."""
        return self.limit - self.committed - self.reserved

    async def reserve(self, cost: int) -> bool:
        """Reserve ``cost``; False when it can never fit. Waits while reservations in flight
        might be released."""
        while True:
            if self.committed + self.reserved + cost <= self.limit:
                self.reserved += cost
                return True
            if self.committed + cost > self.limit or self.reserved == 0:
                return False
            await self._changed.wait()

    def settle(self, cost: int, *, spent: int = 0, uncertain: int = 0) -> None:
        """End a reservation of ``cost``: ``spent`` and ``uncertain`` credits stay committed,
        the rest is released."""
        self.reserved -= cost
        self.spent += spent
        self.uncertain += uncertain
        self._notify()

    def end_attempt(
        self, cost: int, *, spent: int | None = None, outcome: BaseException | None = None
    ) -> None:
        """End an attempt's reservation of ``cost`` by the money rule (:func:`ending`): spent
        (at most ``cost``), kept as may-have-been-spent, or released."""
        how = ending(spent, outcome)
        if how == "spent":
            self.settle(cost, spent=min(spent or 0, cost))
        elif how == "keep":
            self.settle(cost, uncertain=cost)
        else:
            self.settle(cost)
