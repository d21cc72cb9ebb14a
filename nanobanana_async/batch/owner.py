"""Who owns a batch's work: the task group it runs in, and who stops it.

A batch that is iterated runs in a task group that an ``async with`` owns, as aiometer's
``amap`` and Trio's nurseries do: its own (``async with client.batch(...) as run:``) or, for a
plain ``async for`` over ``client.batch(...)``, its client's (``async with
AsyncNanoBanana(...) as client:``). Nothing runs outside one: no system task, no task left to
the garbage collector. The owner's exit stops what still runs and waits for it, so no batch
outlives the block that owns it. (``collect()`` and ``run_batch`` need no group: they run in
the caller's task.)
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.abc
import attrs

from ..errors import NanoBananaError
from .results import BatchStats

__all__ = ["Background", "BatchRegistry", "OwnedGroup"]


@attrs.define(eq=False)
class Background:
    """What a running batch shares with its :class:`~nanobanana_async.batch.run.BatchRun` and
    the client that stops it: the scope to cancel, when it ended and with what."""

    scope: anyio.CancelScope
    finished: anyio.Event
    started: float
    stats: BatchStats
    failure: BaseException | None = None
    ended: float | None = None
    completed: bool = False


class OwnedGroup:
    """A task group entered by an ``async with``'s ``__aenter__`` and left by its
    ``__aexit__``, in the same task. Left without the block's exception: a failure of the block
    must come out as itself, not inside an exception group, and the tasks in it never fail (a
    batch hands its failure to its consumer)."""

    __slots__ = ("_opener", "_stack", "group")

    def __init__(self) -> None:
        self.group: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._opener: int | None = None

    async def enter(self) -> None:
        if self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        self.group = await stack.enter_async_context(anyio.create_task_group())
        self._stack, self._opener = stack, anyio.get_current_task().id

    async def leave(self) -> None:
        """Wait for what is left in the group and leave it (in the task that entered it; a
        no-op elsewhere, where leaving would break the task's scopes)."""
        stack = self._stack
        if stack is None or anyio.get_current_task().id != self._opener:
            return
        self._stack = self.group = None
        await stack.aclose()


class BatchRegistry:
    """The batches of one client still running, so that closing the client stops them, and
    the task group the client's ``async with`` owns, where plain ``async for`` loops run theirs.

    Closing the connection pool under a running batch would strand the connections it was
    still opening: :meth:`close` cancels each batch and waits (a few seconds at most) for it.
    A copy's registry (``with_options``) tells its original of each batch too, and runs its
    batches in the original's group unless its own ``async with`` opened one.
    """

    def __init__(self, parent: BatchRegistry | None = None) -> None:
        self._running: set[Background] = set()
        self._parent = parent
        self._owned = OwnedGroup()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the client (or the one it is a copy of) was closed."""
        return self._closed or (self._parent is not None and self._parent.closed)

    @property
    def group(self) -> anyio.abc.TaskGroup | None:
        """The task group a batch iterated without its own ``async with`` runs in, if any."""
        if self._owned.group is not None:
            return self._owned.group
        return self._parent.group if self._parent is not None else None

    async def open(self) -> None:
        """Enter the client's task group (its ``__aenter__``)."""
        await self._owned.enter()

    async def leave(self) -> None:
        """Leave it (its ``__aexit__``, after :meth:`close`)."""
        await self._owned.leave()

    def add(self, state: Background) -> None:
        self._running.add(state)
        if self._parent is not None:
            self._parent.add(state)

    def discard(self, state: Background) -> None:
        self._running.discard(state)
        if self._parent is not None:
            self._parent.discard(state)

    async def close(self) -> None:
        """Cancel every running batch and wait for them to end.

        A consumer still reading one gets an error rather than a quiet, short end: results it
        never got would otherwise look like a batch that finished.
        """
        self._closed = True
        batches = list(self._running)
        for batch in batches:
            if not batch.completed and batch.failure is None:
                batch.failure = NanoBananaError(
                    "the AsyncNanoBanana client was closed (aclose) while this batch was running: "
                    f"it stopped after {batch.stats.finished} job(s) finished, before every job "
                    "was reported. Close the client after the batch ends (a journal keeps what "
                    "finished, so a rerun resumes)"
                )
            batch.scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            for batch in batches:
                await batch.finished.wait()
