"""The async iterator a batch is consumed through, and the task its work runs in."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
import anyio.lowlevel

from ..errors import NanoBananaError
from ..validation import seconds
from .options import BatchOptions, JobInput
from .owner import Background, BatchRegistry, OwnedGroup
from .results import BatchReport, BatchStats, JobResult
from .runner import Collector, PlainSink, ResultSink, Runner
from .sender import JobSender

if TYPE_CHECKING:
    from ..telemetry import Telemetry

__all__ = ["BatchRun", "run_to_report"]

_TASK = "nanobanana batch"
_NO_OWNER = (
    "iterate this batch inside `async with client.batch(...) as run:`, or open the client "
    "first with `async with AsyncNanoBanana(...) as client:`: a batch's work runs in a task "
    "group that one of them owns"
)


class _Handover(PlainSink):
    """Results on their way from a batch's workers to its consumer.

    The runner's permits keep fewer than ``concurrency`` results here, so handing one over never
    blocks. A queue and an event rather than a memory stream: nothing in it needs closing, so a
    run its consumer dropped without closing it leaves nothing behind to warn about.
    """

    __slots__ = ("_items", "_ready", "ended")

    def __init__(self) -> None:
        self._items: collections.deque[JobResult] = collections.deque()
        self._ready: anyio.Event | None = None
        self.ended = False

    async def send(self, item: JobResult, /) -> None:
        # The checkpoint first, as a stream's send: cancelled, the result is not handed over.
        await anyio.lowlevel.checkpoint()
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.set()

    def end(self) -> None:
        """No more results will come."""
        self.ended = True
        self._wake()

    async def receive(self) -> JobResult:
        """The next result; ``anyio.EndOfStream`` once every one was taken after :meth:`end`."""
        while not self._items:
            if self.ended:
                raise anyio.EndOfStream
            if self._ready is None:
                self._ready = anyio.Event()
            await self._ready.wait()
        await anyio.lowlevel.checkpoint()  # cancelled here, the result stays for the next call
        return self._items.popleft()

    def take_all(self) -> list[JobResult]:
        taken = list(self._items)
        self._items.clear()
        return taken


async def _run(runner: Runner, state: Background, out: ResultSink, registry: BatchRegistry) -> None:
    """Run a batch to its end, its failure kept for its consumer: never raised into the task
    group it runs in, whose cancel scope covers the owner's code."""
    telemetry = runner.telemetry
    span = None
    try:
        with state.scope:
            try:
                # The batch's span is current in this task only (never across the consumer's
                # yields); the workers started below inherit it. (collect() runs this in the
                # caller's task: the span is current there until the batch ends.)
                span = telemetry.start_batch(runner.options) if telemetry is not None else None
                await runner.run(out)
                state.completed = True
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # handed to the consumer, never lost
                state.failure = exc
    finally:
        state.ended = time.perf_counter()
        if span is not None:
            span.end(state.stats, state.failure, state.completed)
        if isinstance(out, _Handover):
            out.end()
        state.finished.set()
        registry.discard(state)


class BatchRun:
    """The async iterator returned by :meth:`AsyncNanoBanana.batch` (and ``worker``).

    Results arrive as jobs finish (in input order with ``ordered=True``). Iterated, the work
    runs in a task of a task group that an ``async with`` owns: this run's own (``async with
    client.batch(...) as run:``), else its client's (``async with AsyncNanoBanana(...) as
    client:``). Leaving this run's ``async with``, cancelling the scope around the loop, or
    :meth:`aclose` cancels the requests in flight and waits for the batch to end. A loop left
    with ``break`` and nothing more costs at most the jobs already in flight (a job is
    dispatched only when the consumer asks for a result); the rest stops when the owner's block
    ends. :meth:`collect` runs the batch in the caller's task instead. ``stats`` are live
    counters.
    """

    def __init__(
        self,
        sender: JobSender,
        jobs: JobInput | None,
        options: BatchOptions,
        registry: BatchRegistry,
        *,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._runner = Runner(sender, jobs, options, telemetry)
        self._registry = registry
        self._handover: _Handover | None = None
        self._state: Background | None = None
        self._owned = OwnedGroup()  # entered by this run's own ``async with``
        self._closed = False
        self._deadline = math.inf  # when stop(grace=...) cancels what is still in flight
        self._unread: list[JobResult] = []  # handed over, never read: closed with them waiting

    @property
    def stats(self) -> BatchStats:
        """Live counters of this batch (succeeded, failed, skipped, credits, retries)."""
        return self._runner.stats

    @property
    def elapsed(self) -> float:
        """Seconds since the batch started (0 before the first result is awaited)."""
        if self._state is None:
            return 0.0
        return (self._state.ended or time.perf_counter()) - self._state.started

    def _new_state(self) -> Background:
        state = self._state = Background(
            anyio.CancelScope(deadline=self._deadline),
            anyio.Event(),
            time.perf_counter(),
            self._runner.stats,
        )
        # The client cancels and awaits its running batches before it closes its connections.
        self._registry.add(state)
        return state

    def _start(self) -> _Handover:
        # The work outlives each __anext__ call, so it runs in a task of its own, in the group
        # of whichever async with owns this run; never in a task nothing owns.
        group = self._owned.group or self._registry.group
        if self._registry.closed:
            raise NanoBananaError("this AsyncNanoBanana client is closed; create a new one")
        if group is None:
            raise NanoBananaError(f"this batch has no owner: {_NO_OWNER}")
        handover = self._handover = _Handover()
        state = self._new_state()
        group.start_soon(_run, self._runner, state, handover, self._registry, name=_TASK)
        return handover

    async def collect(self) -> list[JobResult]:
        """Run the whole batch in the calling task and return every result, in the order they
        finished (input order with ``ordered=True``).

        What :meth:`AsyncNanoBanana.run_batch` does: no task of its own and no hand-over
        between tasks (its consumer always wants the next result at once), with the same
        cancellation, failure hand-over and closing by the client as iterating.
        """
        if self._state is not None:
            raise NanoBananaError("this batch has already started: iterate it, or collect once")
        collector = Collector(self._runner.permits)
        state = self._new_state()
        await _run(self._runner, state, collector, self._registry)
        if state.failure is not None:
            failure, state.failure = state.failure, None
            raise failure from None
        # Stopped with a grace period that ran out: the jobs it cancelled are results too.
        return collector.results + self._runner.unreported

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JobResult:
        handover = self._handover
        if handover is None and self._state is not None:
            # Started by collect(): starting again would send (and pay for) every job twice.
            # Raised before the try below, which would cancel that collect.
            raise NanoBananaError(
                "this batch was run with collect(): its results are what collect() returned; "
                "iterate a batch or collect it, once"
            )
        if self._closed:
            raise StopAsyncIteration
        try:
            if handover is None:
                handover = self._start()
            else:
                # Asking for the next result is what lets one more job be dispatched: a
                # consumer that stops asking, or is being cancelled, costs no more than the
                # jobs already in flight.
                await anyio.lowlevel.checkpoint_if_cancelled()
                self._runner.permits.release()
            return await handover.receive()
        except anyio.EndOfStream:
            state = self._state
            if state is not None:
                await state.finished.wait()
                if state.failure is not None:
                    failure, state.failure = state.failure, None
                    raise failure from None
            raise StopAsyncIteration from None
        except BaseException:
            self._cancel()
            raise

    def stop(self, reason: str = "stopped by the caller", *, grace: float | None = None) -> None:
        """Stop taking jobs and let the ones in flight settle; the batch then ends.

        Nothing more is pulled from the input (a worker claims nothing more: what it claimed
        and did not start goes back to pending), jobs not yet sent are reported ``skipped``
        with ``reason``, and requests in flight finish, their downloads included; iterating
        the batch then ends as usual. After ``grace`` seconds (None: no limit) whatever is
        still in flight is cancelled: a request whose answer never came is kept as
        may-have-been-spent (ambiguous in a store), a download cut short leaves its
        generation journaled for a rerun, and :meth:`report` still counts them. ``reason``
        becomes ``stats.stopped_reason`` (``stop_cause`` ``"stopped"``). Call it again with
        a shorter grace (0: at once) to cut the wait. :func:`stop_on_signals` calls it on
        SIGTERM and SIGINT. A batch that has ended is left as it is.
        """
        if self._state is not None and self._state.finished.is_set():
            return
        if grace is not None:
            seconds(grace, "grace", infinite=True)
            self._deadline = min(self._deadline, anyio.current_time() + grace)
            if self._state is not None:
                self._state.scope.deadline = self._deadline
        self._runner.stop(reason)

    def _cancel(self) -> None:
        if self._state is not None:
            self._state.scope.cancel()

    async def aclose(self) -> None:
        """Cancel what is in flight and wait (up to a few seconds) for the batch to end; its
        results not yet read are kept for :meth:`report`. Iterating it again ends at once."""
        self._closed = True
        self._cancel()
        if self._state is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._state.finished.wait()
        if self._handover is not None:
            # Results handed over and never read are still this batch's: report() has them.
            self._unread.extend(self._handover.take_all())

    async def __aenter__(self) -> Self:
        """Own the task group the batch will run in (``async with client.batch(...) as run``),
        whether or not the client was opened with ``async with``."""
        await self._owned.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            await self._owned.leave()

    def report(self, results: Sequence[JobResult]) -> BatchReport:
        """A :class:`BatchReport` over ``results`` with this batch's totals.

        ``results`` are the ones the caller read; the report adds those it never got: left
        unread when the batch was closed, or ended by a cancellation after they were sent (a
        download cut short, a request whose answer never came), so every job that was, or
        may have been, charged is in it and in its totals.
        """
        extra = [*self._unread, *self._runner.unreported]
        if extra:
            given = {id(r) for r in results}  # collect() returns the unreported ones already
            results = [*results, *(r for r in extra if id(r) not in given)]
        return BatchReport.build(results, self.stats, self.elapsed)


async def run_to_report(run: BatchRun) -> BatchReport:
    """Run ``run`` to the end (:meth:`BatchRun.collect`, in the calling task) and build its
    report."""
    try:
        results = await run.collect()
    finally:
        await run.aclose()
    return run.report(results)
