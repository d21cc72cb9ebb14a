"""The batch runner: a producer pulls jobs lazily, workers process them, results go out."""

from __future__ import annotations

import contextlib
import logging
import math
import pathlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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

__all__ = ["Runner"]

logger = logging.getLogger("nanobanana_async")


class Runner:
    """Runs one batch: a producer pulls jobs lazily, workers process them, results go out.

    Dispatch follows the consumer: a job is pulled from the input and dispatched only with a
    permit from :attr:`permits`, which starts with ``concurrency`` and gets one back each time
    the consumer asks for the next result. Jobs dispatched and not yet taken by the consumer
    (in flight, or finished and waiting) are never more than ``concurrency``, so a consumer
    that stops asking (``break`` with the iterator still referenced) costs at most the jobs
    already in flight. Workers are started as jobs arrive, up to ``concurrency``: a batch of
    one job at ``concurrency=100_000`` starts one worker.

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

    async def run(self, out: MemoryObjectSendStream[JobResult]) -> None:
        async with out:
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

    async def _run(self, out: MemoryObjectSendStream[JobResult]) -> None:
        store = self.processor.store
        if store is None or math.isinf(store.lease):
            await self._run_jobs(out)
            return
        # Leases are renewed while the run goes on, and other runs' expired ones handed back.
        async with anyio.create_task_group() as tg:
            tg.start_soon(_maintain, store)
            await self._run_jobs(out)
            tg.cancel_scope.cancel()

    async def _run_jobs(self, out: MemoryObjectSendStream[JobResult]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                if self.options.ordered and self.jobs is not None:
                    send_done, receive_done = anyio.create_memory_object_stream[JobResult](
                        self.options.concurrency
                    )
                    tg.start_soon(self._reorder, receive_done, out)
                    sink: MemoryObjectSendStream[JobResult] = send_done
                else:
                    sink = out.clone()
                async with sink:
                    input_error = await self._produce(tg, sink)
        except BaseExceptionGroup as group:
            # One failure (say, the caller's job generator raising) is reported as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if input_error is not None:
            raise input_error

    async def _produce(
        self, tg: anyio.abc.TaskGroup, sink: MemoryObjectSendStream[JobResult]
    ) -> Exception | None:
        """Feed the workers; the caller's input failing is returned, not raised.

        Raising would cancel the jobs in flight, whose generations may already be paid for,
        and drop results that had finished: instead pulling stops, the jobs handed out finish
        and are reported, and the batch then ends with the input's error.
        """
        ids = JobIds() if self.store is not None or self.download_dir is not None else None
        names = FileNames() if self.download_dir is not None else None
        pricing = self.sender.pricing
        send, receive = anyio.create_memory_object_stream[Item](0)
        workers = 0

        async def dispatch(item: Item) -> None:
            nonlocal workers
            try:
                send.send_nowait(item)  # an idle worker took it
            except anyio.WouldBlock:
                if workers < self.options.concurrency:
                    # A new worker starts with this job in hand: no wait for it to be
                    # scheduled before the next job is pulled.
                    workers += 1
                    tg.start_soon(self._worker, receive.clone(), sink.clone(), item)
                else:
                    await send.send(item)

        async with send, receive:
            if self.jobs is None:
                await self._claim_jobs(dispatch, pricing, names)
                return None
            index = 0
            try:
                async with contextlib.aclosing(_aiter(self.jobs)) as inputs:
                    while True:
                        # The permit first: nothing is pulled from the input, let alone sent,
                        # before the consumer has room for its result.
                        await self.permits.acquire()
                        try:
                            raw = await anext(inputs)
                        except StopAsyncIteration:
                            break
                        await dispatch(self._item(index, raw, pricing, ids, names))
                        index += 1
            except Exception as exc:
                logger.warning("batch input failed; finishing the jobs already started: %r", exc)
                return exc
        return None

    async def _claim_jobs(
        self,
        dispatch: Callable[[Item], Awaitable[None]],
        pricing: PricingTable,
        names: FileNames | None,
    ) -> None:
        """A worker's input: pending jobs claimed from the store, a chunk at a time.

        Claimed jobs not yet dispatched when the run ends go back to pending when the
        session closes; a chunk is never larger than the concurrency.
        """
        store = self.processor.store
        assert store is not None
        chunk = min(_CLAIM_CHUNK, self.options.concurrency)
        claimed: deque[StoredJob] = deque()
        while True:
            await self.permits.acquire()
            if self.stats.stopped_reason is not None or self.processor.over_budget:
                # What is left stays pending for other workers (or this one, rerun).
                return
            while not claimed:
                claimed.extend(await store.claim(chunk))
                if claimed:
                    break
                # Nothing pending: hand back what dead or expired runs hold, then look again.
                await store.maintain()
                claimed.extend(await store.claim(chunk))
                if claimed:
                    break
                if not self.options.follow:
                    return
                await anyio.sleep(self.options.poll_interval)
            await dispatch(self._stored_item(claimed.popleft(), pricing, names))

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

    async def _reorder(
        self, done: MemoryObjectReceiveStream[JobResult], out: MemoryObjectSendStream[JobResult]
    ) -> None:
        # Bounded by the permits: at most ``concurrency`` results wait here for their turn.
        pending: dict[int, JobResult] = {}
        next_index = 0
        async with done:
            async for result in done:
                pending[result.index] = result
                while next_index in pending:
                    await out.send(pending.pop(next_index))
                    next_index += 1

    async def _worker(
        self,
        items: MemoryObjectReceiveStream[Item],
        sink: MemoryObjectSendStream[JobResult],
        first: Item,
    ) -> None:
        async with items, sink:
            item: Item | None = first
            while item is not None:
                # Journaled inside process, before the slot frees: a kill loses at most the
                # jobs in flight.
                result = await self.processor.process(item)
                self.stats.count(result)
                if self.telemetry is not None and self.telemetry.wants_job_results:
                    await self.telemetry.job_result(result)
                await sink.send(result)
                try:
                    item = await items.receive()
                except anyio.EndOfStream:
                    item = None


_CLAIM_CHUNK = 64


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
