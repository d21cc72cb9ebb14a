"""The batch's credit budget: reserve before sending, then commit or release."""

from __future__ import annotations

import anyio

__all__ = ["CreditBudget"]


class CreditBudget:
    """Reserve-then-commit accounting that never lets committed credits exceed ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.committed = 0
        self.reserved = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def reserve(self, cost: int) -> bool:
        """Reserve ``cost``; False when it can never fit. Waits while in-flight reservations
        might be released."""
        while True:
            if self.committed + self.reserved + cost <= self.limit:
                self.reserved += cost
                return True
            if self.committed + cost > self.limit or self.reserved == 0:
                return False
            await self._changed.wait()

    def release(self, cost: int) -> None:
        self.reserved -= cost
        self._notify()

    def commit(self, cost: int) -> None:
        self.reserved -= cost
        self.committed += cost
        self._notify()

    @property
    def left(self) -> int:
        return self.limit - self.committed - self.reserved
