"""Request starts per second, spaced evenly: the rate cap of a batch or of a process."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["MARGIN", "RateLimiter", "start_interval"]

# Extra spacing per window, absorbing jitter between our start and the server's arrival.
MARGIN = 0.05


def start_interval(per_second: float) -> float:
    """Seconds between two starts so that no window of one second (of ``1 / per_second``
    seconds below 1) holds more than ``floor(per_second)`` starts (one), with :data:`MARGIN`
    per window to spare."""
    limit, window = (int(per_second), 1.0) if per_second >= 1 else (1, 1.0 / per_second)
    return (window + MARGIN) / limit


class RateLimiter:
    """At most ``limit`` starts in any window of ``window`` seconds, spaced evenly (no bursts).

    Consecutive starts are at least ``(window + margin) / limit`` seconds apart, so any
    ``limit + 1`` of them span more than ``window + margin``. Spacing, not a sliding window
    that lets ``limit`` starts through at once: the server measures arrival, not our start,
    and a burst sent on fresh connections arrives tens of milliseconds later than one on warm
    connections a window later, so the server would see two bursts in one window. Spaced
    starts absorb up to ``margin`` of such jitter; beyond it, one start more, not a burst.
    """

    _MARGIN = MARGIN

    def __init__(self, per_second: float) -> None:
        if per_second >= 1:
            self.limit, self.window = int(per_second), 1.0
        else:
            self.limit, self.window = 1, 1.0 / per_second
        self.interval = start_interval(per_second)
        self._next = -math.inf
        self._lock = anyio.Lock()

    async def acquire(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Wait for the next start; ``then`` (further admission: shared limits) is awaited
        before the start is counted, holding the slot, so a later start never overtakes it."""
        async with self._lock:
            delay = self._next - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            if then is not None:
                await then()
            # From the actual start: a late wake-up never lets the next start come early.
            self._next = anyio.current_time() + self.interval
