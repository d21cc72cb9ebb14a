"""Request starts per second, spaced evenly: the batch's rate cap."""

from __future__ import annotations

import math

import anyio

__all__ = ["RateLimiter"]


class RateLimiter:
    """At most ``limit`` starts in any window of ``window`` seconds, spaced evenly (no bursts).

    Consecutive starts are at least ``(window + margin) / limit`` seconds apart, so any
    ``limit + 1`` of them span more than ``window + margin``. Spacing, not a sliding window
    that lets ``limit`` starts through at once: the server measures arrival, not our start,
    and a burst sent on fresh connections arrives tens of milliseconds later than one on warm
    connections a window later, so the server would see two bursts in one window. Spaced
    starts absorb up to ``margin`` of such jitter; beyond it, one start more, not a burst.
    """

    _MARGIN = 0.05

    def __init__(self, per_second: float) -> None:
        if per_second >= 1:
            self.limit, self.window = int(per_second), 1.0
        else:
            self.limit, self.window = 1, 1.0 / per_second
        self.interval = (self.window + self._MARGIN) / self.limit
        self._next = -math.inf
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            delay = self._next - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            # From the actual start: a late wake-up never lets the next start come early.
            self._next = anyio.current_time() + self.interval
