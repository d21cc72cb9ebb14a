"""Group commit: the writes of many jobs in one transaction, each caller waiting for its own.

A store write costs a round trip and a commit; at a few hundred jobs in flight, one
transaction per write would cap a worker far below its request rate. Writes queue here; the
first caller that finds a free writer takes everything queued so far and commits it in one
transaction while the others wait, and whatever queues meanwhile goes into the next one.
There is no writer task to outlive or cancel: callers commit for each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

__all__ = ["GroupCommit", "Op"]


class Op:
    """One caller's write: statements run in order, the last one's outcome is its result."""

    __slots__ = ("done", "error", "result", "statements", "want")

    def __init__(self, statements: Sequence[tuple[str, dict[str, Any]]], want: str) -> None:
        self.statements = statements
        self.want = want  # "rowcount", "row" or "none"
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Commits queued :class:`Op` s in batches, at most ``writers`` transactions at once.

    ``apply`` runs one batch (in a worker thread) and fills in each op's result or error.
    Waiting is shielded from cancellation: a caller always learns whether its write
    committed, and a batch somebody started is always finished and its waiters woken.
    """

    def __init__(self, apply: Callable[[list[Op]], Awaitable[None]], writers: int) -> None:
        self._apply = apply
        self._writers = writers
        self._busy = 0
        self._queued: list[Op] = []
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def submit(self, op: Op) -> Any:
        with anyio.CancelScope(shield=True):
            self._queued.append(op)
            while not op.done:
                if self._busy < self._writers and self._queued:
                    batch, self._queued = self._queued, []
                    self._busy += 1
                    try:
                        await self._apply(batch)
                    except BaseException as exc:  # every op of the batch learns it
                        for queued in batch:
                            if not queued.done:
                                queued.error, queued.done = exc, True
                    finally:
                        self._busy -= 1
                        self._notify()
                else:
                    await self._changed.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def flush(self) -> None:
        """Wait until nothing is queued or being written."""
        with anyio.CancelScope(shield=True):
            while self._queued or self._busy:
                if self._queued and self._busy < self._writers:
                    await self.submit(Op((), "none"))
                else:
                    await self._changed.wait()
