"""The 429 cool-down of one process: a pause shared by every request that consults it."""

from __future__ import annotations

import anyio
import attrs

__all__ = ["Cooldown"]


@attrs.define
class Cooldown:
    """A pause shared by every request of a client, set by a 429's ``Retry-After``."""

    until: float = 0.0

    def pause(self, seconds: float) -> None:
        """Pause until ``seconds`` from now, unless a later pause is already set."""
        self.until = max(self.until, anyio.current_time() + seconds)

    def remaining(self) -> float:
        """Seconds left of the pause (0 when not paused)."""
        return max(0.0, self.until - anyio.current_time())

    def paused(self) -> bool:
        """Whether a pause is in force now (no clock is read when none was ever set)."""
        return bool(self.until) and self.until > anyio.current_time()

    async def wait(self) -> float:
        """Return once no pause is set (at once when none is): the seconds slept."""
        if not self.until:  # never paused: no clock to read
            return 0.0
        started = anyio.current_time()
        delay = self.until - started
        if delay <= 0:
            return 0.0
        # Another 429 may push ``until`` further while we sleep, so re-check after each nap.
        while delay > 0:
            await anyio.sleep(delay)
            delay = self.until - anyio.current_time()
        return anyio.current_time() - started
