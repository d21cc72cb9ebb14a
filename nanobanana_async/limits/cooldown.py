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

    async def wait(self) -> None:
        """Return once no pause is set (at once when none is)."""
        # Another 429 may push ``until`` further while we sleep, so re-check after each nap.
        while (delay := self.until - anyio.current_time()) > 0:  # noqa: ASYNC110
            await anyio.sleep(delay)
