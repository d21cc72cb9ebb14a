"""The batch runner: workers pull jobs lazily and process them, results go out."""

from __future__ import annotations

import logging
import math
import pathlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import InvalidRequestError
from ..models import Job
from ..pricing import PricingTable, as_job
from .files import FileNames
from .journal import JobIds
from .money import CreditBudget
from .options import BatchOptions, JobInput
from .process import Item, JobProcessor
from .rate import RateLimiter
from .results import BatchStats, JobResult
from .sender import JobSender
from .stores import StoredJob, StoreSession, open_store

if TYPE_CHECKING:
    from ..telemetry import Telemetry

__all__ = ["Collector", "ResultSink", "Runner"]

logger = logging.getLogger("nanobanana_async")


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
            sender.policy_for(options.max_retries, options.retry_ambiguous),
            self.stats,
            limiter=RateLimiter(options.max_per_second) if options.max_per_second else None,
            budget=CreditBudget(options.max_credits) if options.max_credits is not None else None,
            download_dir=self.download_dir,
        )
        self.permits = anyio.Semaphore(options.concurrency)
        self.store = open_store(options.journal) if options.journal is not None else None
        self._workers = 0  # started
        self._idle = 0  # started and not holding a job (waiting for a permit or a job)

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
        async with anyio.create_task_group() as tg:
            tg.start_soon(_maintain, store)
            await self._run_jobs(out)
            tg.cancel_scope.cancel()

    async def _run_jobs(self, out: ResultSink) -> None:
        feed: _Feed = _ClaimFeed(self) if self.jobs is None else _InputFeed(self, self.jobs)
        try:
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
        except BaseExceptionGroup as group:
            # One failure (say, a job store failing) is reported as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if feed.error is not None:
            raise feed.error

    async def _worker(self, feed: _Feed, sink: ResultSink, tg: anyio.abc.TaskGroup) -> None:
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
                item = await feed.next()
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
                if self.telemetry is not None and self.telemetry.wants_job_results:
                    await self.telemetry.job_result(result)
                await sink.send(result)
                self._idle += 1

    @staticmethod
    def _stored_item(stored: StoredJob, pricing: PricingTable, names: FileNames | None) -> Item:
        try:
            job = Job(
                stored.prompt,
                stored.model,
                stored.image_size,
                stored.num,
                stored.id,
                pricing=pricing,
            )
            cost = pricing.credits(job)
        except InvalidRequestError as exc:
            return Item(stored.index, None, stored.id, error=exc, claimed=True)
        stem = names.claim(stored.id, job.num) if names is not None else None
        return Item(
            stored.index,
            job,
            stored.id,
            cost,
            stem=stem,
            claimed=True,
            idempotency_key=stored.idempotency_key,
        )

    @staticmethod
    def _item(
        index: int,
        raw: Job | str,
        pricing: PricingTable,
        ids: JobIds | None,
        names: FileNames | None,
    ) -> Item:
        try:
            job = as_job(raw, pricing)
            cost = pricing.credits(job)
            job_id = ids.assign(job) if ids is not None else job.id
            stem = (
                names.claim(job_id, job.num) if names is not None and job_id is not None else None
            )
            return Item(index, job, job_id, cost, stem=stem)
        except InvalidRequestError as exc:
            return Item(index, raw if isinstance(raw, Job) else None, None, error=exc)

    async def _reorder(self, done: MemoryObjectReceiveStream[JobResult], out: ResultSink) -> None:
        # Bounded by the permits: at most ``concurrency`` results wait here for their turn.
        pending: dict[int, JobResult] = {}
        next_index = 0
        async with done:
            async for result in done:
                pending[result.index] = result
                while next_index in pending:
                    await out.send(pending.pop(next_index))
                    next_index += 1


_CLAIM_CHUNK = 64


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


class Collector:
    """The consumer ``run_batch`` needs: every result into a list as it comes, and at once a
    permit back (it asks for the next result right away), with no stream between tasks.

    A job on an in-process transport may finish without ever yielding to the event loop: a
    checkpoint per result keeps the batch cancellable and the other tasks running.
    """

    def __init__(self, permits: anyio.Semaphore) -> None:
        self.results: list[JobResult] = []
        self._permits = permits

    async def send(self, item: JobResult, /) -> None:
        self.results.append(item)
        self._permits.release()
        await anyio.lowlevel.checkpoint()

    def clone(self) -> Collector:
        return self

    async def __aenter__(self) -> Collector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _Feed:
    """The jobs of a batch, pulled by the workers one at a time; None at the end."""

    done = False
    error: Exception | None = None

    async def next(self) -> Item | None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class _InputFeed(_Feed):
    """The caller's iterable or async iterable, consumed lazily.

    A plain iterable is advanced without awaiting (no two workers are ever inside ``next`` at
    once); an async iterable under a lock. The input failing is kept in ``error``, not
    raised: raising would cancel the jobs in flight, whose generations may already be paid
    for, and drop results that had finished. Pulling stops instead, the jobs handed out finish
    and are reported, and the batch then ends with the input's error.
    """

    def __init__(self, runner: Runner, jobs: JobInput) -> None:
        self._pricing = runner.sender.pricing
        wants_ids = runner.store is not None or runner.download_dir is not None
        self._ids = JobIds() if wants_ids else None
        self._names = FileNames() if runner.download_dir is not None else None
        self._index = 0
        self._sync: Iterator[Job | str] | None = None
        self._async: AsyncGenerator[Job | str, None] | None = None
        self._lock: anyio.Lock | None = None
        if isinstance(jobs, AsyncIterable):
            self._async = _aiter(jobs)
            self._lock = anyio.Lock()
        else:
            self._source: Iterable[Job | str] = jobs

    async def next(self) -> Item | None:
        if self.done:
            return None
        lock = self._lock
        try:
            if lock is None:
                iterator = self._sync
                if iterator is None:
                    iterator = self._sync = iter(self._source)
                raw = next(iterator)
            else:
                async with lock:
                    if self.done:
                        return None
                    assert self._async is not None
                    raw = await anext(self._async)
        except (StopIteration, StopAsyncIteration):
            self.done = True
            return None
        except Exception as exc:
            logger.warning("batch input failed; finishing the jobs already started: %r", exc)
            self.done = True
            self.error = exc
            return None
        index = self._index
        self._index += 1
        return Runner._item(index, raw, self._pricing, self._ids, self._names)

    async def aclose(self) -> None:
        # The batch consumes its input: an async one is closed when the batch ends.
        self.done = True
        generator, self._async = self._async, None
        if generator is not None:
            await generator.aclose()


class _ClaimFeed(_Feed):
    """A store worker's input: pending jobs claimed from the store, a chunk at a time.

    Claimed jobs not yet handed out when the run ends go back to pending when the session
    closes; a chunk is never larger than the concurrency.
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._pricing = runner.sender.pricing
        self._names = FileNames() if runner.download_dir is not None else None
        self._chunk = min(_CLAIM_CHUNK, runner.options.concurrency)
        self._claimed: deque[StoredJob] = deque()
        self._lock = anyio.Lock()

    async def next(self) -> Item | None:
        runner = self._runner
        async with self._lock:
            if self.done:
                return None
            if runner.stats.stopped_reason is not None or runner.processor.over_budget:
                # What is left stays pending for other workers (or this one, rerun).
                self.done = True
                return None
            store = runner.processor.store
            assert store is not None
            claimed = self._claimed
            while not claimed:
                claimed.extend(await store.claim(self._chunk))
                if claimed:
                    break
                # Nothing pending: hand back what dead or expired runs hold, then look again.
                await store.maintain()
                claimed.extend(await store.claim(self._chunk))
                if claimed:
                    break
                if not runner.options.follow:
                    self.done = True
                    return None
                await anyio.sleep(runner.options.poll_interval)
            return Runner._stored_item(claimed.popleft(), self._pricing, self._names)


async def _maintain(store: StoreSession) -> None:
    while True:
        await anyio.sleep(store.lease / 3)
        await store.maintain()


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


async def _aiter(jobs: JobInput) -> AsyncGenerator[Job | str, None]:
    if isinstance(jobs, AsyncIterable):
        iterator = aiter(jobs)
        try:
            async for job in iterator:
                yield job
        finally:
            # The batch consumes its input: an async generator left half-read would only be
            # finalised by the garbage collector (Trio warns about exactly that).
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        for job in jobs:
            yield job
