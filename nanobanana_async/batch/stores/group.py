"""Group commit: the writes of many jobs in one transaction, each caller waiting for its own.

A store write costs a round trip and a commit; at a few hundred jobs in flight, one
transaction per write would cap a worker far below its request rate. Writes queue here; a
caller that finds a free writer leads: it lets the tasks that are ready run first (they
queue their writes too), takes everything queued and commits it in one transaction while
the others wait. Whatever queues meanwhile goes into the next batch, whose first caller is
handed the lead when the writer is free again. There is no writer task to outlive or
cancel: callers commit for each other.

The callers of one batch wait on one event, set once the batch is decided, and the next
leader on an event of its own: a commit wakes the callers it decided and one more, never
every caller waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["GroupCommit", "Op"]

_GATHER_TURNS = 16  # turns of the event loop a leader waits for more writes, at most
_GATHER_MAX = 256  # writes that make a batch big enough to commit at once


class Op:
    """One caller's write: statements run in order, the last one's outcome is its result."""

    __slots__ = ("done", "error", "result", "statements", "want")

    def __init__(self, statements: Sequence[tuple[str, dict[str, Any]]], want: str) -> None:
        self.statements = statements
        self.want = want  # "rowcount", "row", "total" or "none"
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class _Batch:
    """The writes queued for one transaction: ``decided`` is set once it committed (or
    failed). ``claimed`` once a caller leads it; ``lead``, if set, wakes the caller waiting
    to lead it once a writer is free."""

    __slots__ = ("claimed", "decided", "lead", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.decided = anyio.Event()
        self.lead: anyio.Event | None = None
        self.claimed = False


class GroupCommit:
    """Commits queued :class:`Op` s in batches, at most ``writers`` transactions at once.

    ``apply`` runs one batch and fills in each op's result or error. Waiting is shielded from
    cancellation: a caller always learns whether its write committed, and a batch somebody
    started is always finished and its waiters woken.
    """

    def __init__(self, apply: Callable[[list[Op]], Awaitable[None]], writers: int) -> None:
        self._apply = apply
        self._writers = writers
        self._busy = 0
        self._queued: _Batch | None = None
        self._idle: anyio.Event | None = None  # set when nothing is queued or being written

    async def submit(self, op: Op) -> Any:
        with anyio.CancelScope(shield=True):
            batch = self._queued
            if batch is None:
                batch = self._queued = _Batch()
            batch.ops.append(op)
            if not batch.claimed:
                if self._busy < self._writers:
                    batch.claimed = True
                    await self._commit(batch)
                elif batch.lead is None:  # the first to wait: it leads once a writer is free
                    batch.lead = anyio.Event()
                    await batch.lead.wait()  # claimed for it by _hand_over
                    await self._commit(batch)
            if not op.done:
                await batch.decided.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def _commit(self, batch: _Batch) -> None:
        """Gather more writes into ``batch``, commit it, then hand the lead over."""
        self._busy += 1
        try:
            await self._gather(batch)
            if self._queued is batch:
                self._queued = None
            await self._apply(batch.ops)
        except BaseException as exc:  # every op of the batch learns it
            for queued in batch.ops:
                if not queued.done:
                    queued.error, queued.done = exc, True
        finally:
            self._busy -= 1
            for queued in batch.ops:
                if not queued.done:  # ``apply`` decides each op; never leave one waiting
                    queued.error = RuntimeError("the store did not decide this write")
                    queued.done = True
            batch.decided.set()
            self._hand_over()

    async def _gather(self, batch: _Batch) -> None:
        """Let the tasks that are ready run first, while they add writes to ``batch``.

        A commit costs about as much as a few writes in it, and right after one, the jobs it
        woke are about to write again: taking only what is queued at this instant made
        transactions of one or two writes. Stops as soon as a turn of the event loop adds
        nothing (a job waiting for the network adds nothing: a lone write waits one turn).
        """
        for _ in range(_GATHER_TURNS):
            queued = len(batch.ops)
            if queued >= _GATHER_MAX:
                return
            await anyio.lowlevel.checkpoint()
            if len(batch.ops) == queued:
                return

    def _hand_over(self) -> None:
        batch = self._queued
        if batch is not None:
            if not batch.claimed and batch.lead is not None and self._busy < self._writers:
                batch.claimed = True
                batch.lead.set()
        elif not self._busy and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def flush(self) -> None:
        """Wait until nothing is queued or being written."""
        with anyio.CancelScope(shield=True):
            while self._queued is not None or self._busy:
                if self._busy < self._writers:
                    await self.submit(Op((), "none"))
                else:
                    if self._idle is None:
                        self._idle = anyio.Event()
                    await self._idle.wait()
