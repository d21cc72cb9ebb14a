"""The async iterator a batch is consumed through, and the background task it runs in."""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel
import attrs
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import NanoBananaError
from ..validation import seconds
from .options import BatchOptions, JobInput
from .results import BatchReport, BatchStats, JobResult
from .runner import Collector, ResultSink, Runner
from .sender import JobSender

if TYPE_CHECKING:
    from ..telemetry import Telemetry

__all__ = ["BatchRegistry", "BatchRun", "run_to_report"]


@attrs.define(eq=False)
class _Background:
    """What a batch's background task shares with its :class:`BatchRun` and the client.

    Never the ``BatchRun`` itself: a task holding it would keep it alive, so breaking out of
    ``async for`` (which only drops the reference) would not reach ``__del__`` and the
    workers would go on generating, and paying, with nobody reading the results.
    """

    scope: anyio.CancelScope
    finished: anyio.Event
    started: float
    stats: BatchStats
    failure: BaseException | None = None
    ended: float | None = None
    task: Any = None
    completed: bool = False


class BatchRegistry:
    """The batches of one client still running, so that closing the client can stop them.

    Closing the connection pool under a running batch would strand the connections it was
    still opening: :meth:`close` cancels each batch and waits (a few seconds at most) for it.
    """

    def __init__(self) -> None:
        self._running: set[_Background] = set()

    def add(self, state: _Background) -> None:
        self._running.add(state)

    def discard(self, state: _Background) -> None:
        self._running.discard(state)

    async def close(self) -> None:
        """Cancel every running batch and wait for them to end.

        A consumer still reading one gets an error rather than a quiet, short end: results it
        never got would otherwise look like a batch that finished.
        """
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


async def _run_in_background(
    runner: Runner,
    state: _Background,
    send: ResultSink,
    registry: BatchRegistry,
) -> None:
    # The batch's span is current in this task only (never across the consumer's yields); the
    # workers started below inherit it. (``BatchRun.collect`` runs this in the caller's task:
    # the span is current there until the batch ends.)
    telemetry = runner.telemetry
    span = telemetry.start_batch(runner.options) if telemetry is not None else None
    try:
        with state.scope:
            try:
                await runner.run(send)
                state.completed = True
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # handed to the consumer, never lost
                state.failure = exc
    finally:
        state.ended = time.perf_counter()
        if span is not None:
            span.end(state.stats, state.failure, state.completed)
        state.finished.set()
        registry.discard(state)


class BatchRun:
    """The async iterator returned by :meth:`AsyncNanoBanana.batch`.

    Results arrive as jobs finish (in input order with ``ordered=True``). The work runs in a
    background task tied to this object: breaking out of ``async for``, cancelling the scope
    around it, or :meth:`aclose` cancels the requests in flight. ``async with`` around it also
    waits for that background task to end. ``stats`` are live counters.
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
        # Set before the runner, which validates ``jobs`` and may raise: ``__del__`` still runs
        # on the half-built object and reads these.
        self._receive: MemoryObjectReceiveStream[JobResult] | None = None
        self._state: _Background | None = None
        self._runner = Runner(sender, jobs, options, telemetry)
        self._registry = registry
        self._deadline = math.inf  # when stop(grace=...) cancels what is still in flight
        self._unread: list[JobResult] = []  # handed over, never read: closed with them queued

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

    def _new_state(self) -> _Background:
        state = self._state = _Background(
            anyio.CancelScope(deadline=self._deadline),
            anyio.Event(),
            time.perf_counter(),
            self._runner.stats,
        )
        # The client cancels and awaits its running batches before it closes its connections.
        self._registry.add(state)
        return state

    def _start(self) -> MemoryObjectReceiveStream[JobResult]:
        send, receive = anyio.create_memory_object_stream[JobResult](
            self._runner.options.concurrency
        )
        self._receive = receive
        state = self._new_state()
        # The work must outlive each __anext__ call but not the batch; a task group cannot
        # span the caller's yields, so it runs as its own top-level task that this object
        # cancels. Trio needs a system task for that; asyncio a plain task.
        if sniffio.current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(
                _run_in_background,
                self._runner,
                state,
                send,
                self._registry,
                name="nanobanana batch",
                context=contextvars.copy_context(),
            )
        else:
            import asyncio

            state.task = asyncio.get_running_loop().create_task(
                _run_in_background(self._runner, state, send, self._registry),
                name="nanobanana batch",
            )
        return receive

    async def collect(self) -> list[JobResult]:
        """Run the whole batch in the calling task and return every result, in the order they
        finished (input order with ``ordered=True``).

        What :meth:`AsyncNanoBanana.run_batch` does: no background task and no stream
        between tasks (its consumer always wants the next result at once), with the same
        cancellation, failure hand-over and closing by the client as iterating.
        """
        if self._state is not None:
            raise NanoBananaError("this batch has already started: iterate it, or collect once")
        collector = Collector(self._runner.permits)
        state = self._new_state()
        await _run_in_background(self._runner, state, collector, self._registry)
        if state.failure is not None:
            failure, state.failure = state.failure, None
            raise failure from None
        # Stopped with a grace period that ran out: the jobs it cancelled are results too.
        return collector.results + self._runner.unreported

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JobResult:
        receive = self._receive
        if receive is None and self._state is not None:
            # Started by collect(): starting again would send (and pay for) every job twice.
            # Raised before the try below, which would cancel that collect.
            raise NanoBananaError(
                "this batch was run with collect(): its results are what collect() returned; "
                "iterate a batch or collect it, once"
            )
        try:
            if receive is None:
                receive = self._start()
            else:
                # Asking for the next result is what lets one more job be dispatched: a
                # consumer that stops asking, or is being cancelled, costs no more than the
                # jobs already in flight.
                await anyio.lowlevel.checkpoint_if_cancelled()
                self._runner.permits.release()
            return await receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
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
        """Cancel what is in flight and wait (up to a few seconds) for the batch to end."""
        self._cancel()
        if self._state is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._state.finished.wait()
        receive = self._receive
        if receive is not None:
            # Results handed over and never read are still this batch's: report() has them.
            with contextlib.suppress(
                anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError
            ):
                while True:
                    self._unread.append(receive.receive_nowait())
            receive.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Breaking out of ``async for`` drops the last reference: stop the work right away.
        with contextlib.suppress(Exception):  # the event loop may already be gone at shutdown
            self._cancel()
        if self._receive is not None:
            self._receive.close()

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
    """Run ``run`` to the end (:meth:`BatchRun.collect`) and build its report."""
    async with run:
        results = await run.collect()
    return run.report(results)
