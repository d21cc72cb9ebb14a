"""The batch runner: workers pull jobs lazily and process them, results go out."""

from __future__ import annotations

import contextlib
import logging
import math
import pathlib
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import InvalidRequestError, NanoBananaError
from ..limits import Caps
from .feeds import ClaimFeed, Feed, InputFeed
from .options import BatchOptions, JobInput
from .process import JobProcessor
from .results import BatchStats, JobResult
from .sender import JobSender
from .stores import StoreError, StoreSession, StoreUnavailableError, open_store

if TYPE_CHECKING:
    from ..telemetry import Telemetry

__all__ = ["Collector", "PlainSink", "ResultSink", "Runner", "single_error"]

logger = logging.getLogger("nanobanana_async")

T = TypeVar("T")


class Runner:
    """Runs one batch: workers pull jobs lazily and process them, results go out.

    Dispatch follows the consumer: a job is pulled from the input and dispatched only with a
    permit from :attr:`permits`, which starts with ``concurrency`` and gets one back each time
    the consumer asks for the next result. Jobs dispatched and not yet taken by the consumer
    (in flight, or finished and waiting) are never more than ``concurrency``, so a consumer
    that stops asking (``break`` with the iterator still referenced) costs at most the jobs
    already in flight. Each worker pulls its own jobs (a feed: the input, or a store), so a
    job costs the runner no hand-over between tasks. Workers are started as jobs arrive, up to
    ``concurrency``: a batch of one job at ``concurrency=100_000`` starts two (the second
    finds the input's end).

    With ``jobs=None`` the runner is a store's worker: jobs are claimed from the store
    (``options.journal``) in chunks, as permits allow, instead of pulled from an input.

    :meth:`stop` ends dispatch: no job is pulled or claimed any more, jobs waiting to send
    are skipped, and requests in flight finish. Jobs that finished or stopped without reaching
    the consumer (the batch was cancelled: a download cut short, a result not yet handed
    over) are kept in :attr:`unreported`, counted in :attr:`stats`, so a report still has
    every job that was charged or may have been.
    """

    def __init__(
        self,
        sender: JobSender,
        jobs: JobInput | None,
        options: BatchOptions,
        telemetry: Telemetry | None = None,
    ) -> None:
        if jobs is None:
            if options.journal is None:
                raise InvalidRequestError("a worker needs a job store", param="store")
        elif not isinstance(jobs, Iterable | AsyncIterable) or isinstance(jobs, str | bytes):
            raise InvalidRequestError(
                "jobs must be an iterable or async iterable of Job or prompt strings "
                f"(a single string is not: wrap it in a list), got {type(jobs).__name__}",
                param="jobs",
            )
        self.sender = sender
        self.jobs = jobs
        self.telemetry = telemetry  # told of each job's result (metrics, on_job_result hook)
        self.options = options
        self.stats = BatchStats()
        self.download_dir = (
            pathlib.Path(options.download_dir) if options.download_dir is not None else None
        )
        directory = self.download_dir
        if directory is not None and directory.exists() and not directory.is_dir():
            raise _not_a_directory(directory)
        self.processor = JobProcessor(
            sender,
            sender.policy(options.max_retries, options.retry_ambiguous),
            self.stats,
            caps=(
                Caps(max_credits=options.max_credits, max_per_second=options.max_per_second)
                if options.max_credits is not None or options.max_per_second is not None
                else None
            ),
            download_dir=self.download_dir,
            on_store_failure=self._wake,
        )
        self.permits = anyio.Semaphore(options.concurrency)
        self.store = open_store(options.journal) if options.journal is not None else None
        self._workers = 0  # started
        self._idle = 0  # started and not holding a job (waiting for a permit or a job)
        # Waits for the next job (an async input, a worker's poll) that stop() cuts short.
        self._waits: set[anyio.CancelScope] = set()
        # stop() was called: the input is not read further. (A batch stopped by a 401 or
        # "insufficient credits" reads it on, to report every job as skipped.)
        self.stopping = False

    @property
    def unreported(self) -> list[JobResult]:
        """Results no consumer received (the batch was cancelled), counted in the stats."""
        return self.processor.unreported

    def stop(self, reason: str) -> None:
        """Stop dispatching: nothing more is pulled or claimed, and jobs not yet sent are
        skipped with ``reason``; requests in flight go on (cancel the batch to end them)."""
        self.stopping = True
        stats = self.stats
        if stats.stopped_reason is None:
            stats.stopped_reason = reason
            stats.stop_cause = "stopped"
            logger.info("batch stopping: %s", reason)
        self._wake()

    def _wake(self) -> None:
        """Cut the waits for the next job short: the run stops, or its store went away."""
        for scope in self._waits:
            scope.cancel()

    async def wait_for_job(self, wait: Callable[..., Awaitable[T]], *args: Any) -> tuple[T] | None:
        """``(await wait(*args),)``, or None when :meth:`stop` (or the store going away) cuts
        the wait short."""
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                if not self.stopping and self.processor.store_failure is None:
                    return (await wait(*args),)
            finally:
                self._waits.discard(scope)
        return None

    async def run(self, out: ResultSink) -> None:
        async with out:
            # Limits that cannot be consulted would fail every job the same way: fail once.
            await self.sender.ready()
            if self.download_dir is not None:
                await _make_directory(self.download_dir)
            if self.store is not None:
                self.processor.store = await self.store.connect(worker=self.jobs is None)
            try:
                await self._run(out)
            finally:
                if self.processor.store is not None:
                    with anyio.CancelScope(shield=True):
                        await self.processor.store.close()
        logger.info(
            "batch finished: %d succeeded, %d failed, %d skipped, %d credits",
            self.stats.succeeded,
            self.stats.failed,
            self.stats.skipped,
            self.stats.credits_spent,
        )

    async def _run(self, out: ResultSink) -> None:
        store = self.processor.store
        if store is None or math.isinf(store.lease):
            await self._run_jobs(out)
            return
        # Leases are renewed while the run goes on, and other runs' expired ones handed back.
        with single_error():
            async with anyio.create_task_group() as tg:
                tg.start_soon(_maintain, store, self.processor)
                await self._run_jobs(out)
                tg.cancel_scope.cancel()

    async def _run_jobs(self, out: ResultSink) -> None:
        feed: Feed = ClaimFeed(self) if self.jobs is None else InputFeed(self, self.jobs)
        with single_error():
            try:
                async with anyio.create_task_group() as tg:
                    if self.options.ordered and self.jobs is not None:
                        send_done, receive_done = anyio.create_memory_object_stream[JobResult](
                            self.options.concurrency
                        )
                        tg.start_soon(self._reorder, receive_done, out)
                        sink: ResultSink = send_done
                    else:
                        sink = out.clone()
                    async with sink:
                        # Workers start as jobs arrive (see _worker), up to the concurrency.
                        self._workers = self._idle = 1
                        tg.start_soon(self._worker, feed, sink.clone(), tg)
            finally:
                await feed.aclose()
        # The jobs in flight are settled and reported: now the run ends with what stopped it.
        if self.processor.store_failure is not None:
            raise self.processor.store_failure
        if feed.error is not None:
            raise feed.error
        over_budget = self.processor.over_budget
        if self.jobs is None and over_budget is not None and self.stats.stopped_reason is None:
            # Said once the jobs in flight are settled: set earlier, it would stop their
            # retries as a stopped batch does.
            self.stats.stopped_reason = (
                f"out of budget ({over_budget}): the jobs this worker did not run stay pending"
            )
            self.stats.stop_cause = "budget"

    async def _worker(self, feed: Feed, sink: ResultSink, tg: anyio.abc.TaskGroup) -> None:
        """Take a permit, pull the next job from the feed, process it, hand its result over.

        Each worker pulls its own jobs: no producer task and no hand-over between tasks, so a
        job costs no task switch of the runner's own. A worker that finds no other worker
        waiting for a job starts one more (up to the concurrency) before it processes its job.
        """
        permits = self.permits
        async with sink:
            while True:
                # The permit first: nothing is pulled from the input, let alone sent, before
                # the consumer has room for its result.
                try:
                    permits.acquire_nowait()
                except anyio.WouldBlock:
                    await permits.acquire()
                # A store that stopped answering: no more jobs (see process.store_failed).
                item = await feed.next() if self.processor.store_failure is None else None
                if item is None:
                    permits.release()  # not used: the next worker waiting finds the end too
                    return
                self._idle -= 1
                if self._idle == 0 and self._workers < self.options.concurrency and not feed.done:
                    self._workers += 1
                    self._idle += 1
                    tg.start_soon(self._worker, feed, sink.clone(), tg)
                # Journaled inside process, before the slot frees: a kill loses at most the
                # jobs in flight.
                result = await self.processor.process(item)
                self.stats.count(result)
                try:
                    telemetry = self.telemetry
                    if telemetry is not None:
                        telemetry.job_result(result)
                        if telemetry.on_job_result is not None:
                            await telemetry.job_result_hook(result)
                    # Never blocks (the permits keep results in hand below the stream's
                    # buffer), and is cancelled, if at all, before the result is handed over.
                    await sink.send(result)
                except BaseException:
                    self.processor.unreported.append(result)
                    raise
                self._idle += 1

    async def _reorder(self, done: MemoryObjectReceiveStream[JobResult], out: ResultSink) -> None:
        # Bounded by the permits: at most ``concurrency`` results wait here for their turn.
        pending: dict[int, JobResult] = {}
        next_index = 0
        async with done:
            try:
                async for result in done:
                    pending[result.index] = result
                    while next_index in pending:
                        await out.send(pending[next_index])
                        del pending[next_index]
                        next_index += 1
            finally:
                # Cancelled: what waited for its turn was never handed over.
                waiting = list(pending.values())
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                    while True:
                        waiting.append(done.receive_nowait())
                self.processor.unreported.extend(waiting)


@contextlib.contextmanager
def single_error() -> Iterator[None]:
    """A failure in a task group (say, a job store failing) is raised as itself, not as an
    ExceptionGroup around it: callers (and the command line) catch it by its type. Several
    SDK errors at once (the same full disk under two jobs' writes) come out as the first."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 or all(isinstance(e, NanoBananaError) for e in leaves):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


class ResultSink(Protocol):
    """Where workers hand results: the stream a :class:`BatchRun` reads, or a
    :class:`Collector`. Each worker holds a clone and closes it when it ends."""

    async def send(self, item: JobResult, /) -> None: ...

    def clone(self) -> ResultSink: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...


class PlainSink:
    """A sink with nothing to close: every worker shares it (its clone is itself) and leaving
    ``async with`` does nothing. What a result reaching it means is the subclass's."""

    __slots__ = ()

    def clone(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class Collector(PlainSink):
    """The consumer ``run_batch`` needs: every result into a list as it comes, and at once a
    permit back (it asks for the next result right away), with no stream between tasks.

    A job on an in-process transport may finish without ever yielding to the event loop: a
    checkpoint per result keeps the batch cancellable and the other tasks running.
    """

    def __init__(self, permits: anyio.Semaphore) -> None:
        self.results: list[JobResult] = []
        self._permits = permits

    async def send(self, item: JobResult, /) -> None:
        # The checkpoint first: a result is handed over whole, or not at all when cancelled.
        await anyio.lowlevel.checkpoint()
        self.results.append(item)
        self._permits.release()


async def _maintain(store: StoreSession, processor: JobProcessor) -> None:
    while True:
        await anyio.sleep(store.lease / 3)
        try:
            await store.maintain()
        except StoreUnavailableError as exc:
            processor.store_failed(exc)
            return
        except StoreError as exc:  # the next beat tries again; a lease lasts three beats
            logger.warning("job store: leases not renewed this time: %s", exc)


def _not_a_directory(directory: pathlib.Path) -> InvalidRequestError:
    return InvalidRequestError(
        f"download_dir {str(directory)!r} exists and is not a directory: "
        "pass a directory (it is created if missing)",
        param="download_dir",
    )


async def _make_directory(directory: pathlib.Path) -> None:
    try:
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _not_a_directory(directory) from None
    except OSError as exc:
        raise InvalidRequestError(
            f"cannot create download_dir {str(directory)!r}: {exc.strerror or exc}",
            param="download_dir",
        ) from None
