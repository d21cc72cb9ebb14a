"""The batch runner: a producer pulls jobs lazily, workers process them, results go out."""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import AsyncGenerator, AsyncIterable, Iterable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import InvalidRequestError
from ..models import Job
from ..pricing import as_job
from .files import FileNames
from .journal import JobIds, Journal
from .money import CreditBudget
from .options import BatchOptions, JobInput
from .process import Item, JobProcessor
from .rate import RateLimiter
from .results import BatchStats, JobResult
from .sender import JobSender

__all__ = ["Runner"]

logger = logging.getLogger("nanobanana_async")


class Runner:
    """Runs one batch: a producer pulls jobs lazily, ``concurrency`` workers process them.

    At most ``concurrency`` jobs are in flight; results go out through a stream whose buffer
    is ``concurrency``, so a slow consumer stalls dispatch. ``ordered`` adds a reorder stage
    bounded by a window of jobs.
    """

    def __init__(self, sender: JobSender, jobs: JobInput, options: BatchOptions) -> None:
        if not isinstance(jobs, Iterable | AsyncIterable) or isinstance(jobs, str | bytes):
            raise InvalidRequestError(
                "jobs must be an iterable or async iterable of Job or prompt strings "
                f"(a single string is not: wrap it in a list), got {type(jobs).__name__}",
                param="jobs",
            )
        self.sender = sender
        self.jobs = jobs
        self.options = options
        self.stats = BatchStats()
        self.download_dir = (
            pathlib.Path(options.download_dir) if options.download_dir is not None else None
        )
        self.processor = JobProcessor(
            sender,
            sender.policy_for(options.max_retries, options.retry_ambiguous),
            self.stats,
            limiter=RateLimiter(options.max_per_second) if options.max_per_second else None,
            budget=CreditBudget(options.max_credits) if options.max_credits is not None else None,
            download_dir=self.download_dir,
        )
        self.window = anyio.Semaphore(options.ordered_window) if options.ordered else None

    async def run(self, out: MemoryObjectSendStream[JobResult]) -> None:
        async with out:
            if self.download_dir is not None:
                await anyio.Path(self.download_dir).mkdir(parents=True, exist_ok=True)
            if self.options.journal is not None:
                self.processor.journal = await anyio.to_thread.run_sync(
                    Journal, self.options.journal
                )
            try:
                await self._run(out)
            finally:
                if self.processor.journal is not None:
                    self.processor.journal.close()
        logger.info(
            "batch finished: %d succeeded, %d failed, %d skipped, %d credits",
            self.stats.succeeded,
            self.stats.failed,
            self.stats.skipped,
            self.stats.credits_spent,
        )

    async def _run(self, out: MemoryObjectSendStream[JobResult]) -> None:
        send_items, receive_items = anyio.create_memory_object_stream[Item](0)
        try:
            async with anyio.create_task_group() as tg:
                if self.options.ordered:
                    send_done, receive_done = anyio.create_memory_object_stream[JobResult](
                        self.options.concurrency
                    )
                    tg.start_soon(self._reorder, receive_done, out)
                    sink: MemoryObjectSendStream[JobResult] = send_done
                else:
                    sink = out.clone()
                async with receive_items, sink:
                    for _ in range(self.options.concurrency):
                        tg.start_soon(self._worker, receive_items.clone(), sink.clone())
                input_error = await self._produce(send_items)
        except BaseExceptionGroup as group:
            # One failure (say, the caller's job generator raising) is reported as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if input_error is not None:
            raise input_error

    async def _produce(self, send: MemoryObjectSendStream[Item]) -> Exception | None:
        """Feed the workers; the caller's input failing is returned, not raised.

        Raising would cancel the jobs in flight, whose generations may already be paid for,
        and drop results that had finished: instead pulling stops, the jobs handed out finish
        and are reported, and the batch then ends with the input's error.
        """
        journal = self.processor.journal
        ids = JobIds() if journal is not None or self.download_dir is not None else None
        names = FileNames() if self.download_dir is not None else None
        pricing = self.sender.pricing
        async with send:
            index = 0
            try:
                async with contextlib.aclosing(_aiter(self.jobs)) as inputs:
                    async for raw in inputs:
                        try:
                            job = as_job(raw, pricing)
                            cost = pricing.credits(job)
                            job_id = ids.assign(job) if ids is not None else job.id
                            stem = (
                                names.claim(job_id, job.num)
                                if names is not None and job_id is not None
                                else None
                            )
                            item = Item(index, job, job_id, cost, stem=stem)
                        except InvalidRequestError as exc:
                            item = Item(
                                index, raw if isinstance(raw, Job) else None, None, error=exc
                            )
                        if self.window is not None:
                            await self.window.acquire()
                        await send.send(item)
                        index += 1
            except Exception as exc:
                logger.warning("batch input failed; finishing the jobs already started: %r", exc)
                return exc
        return None

    async def _reorder(
        self, done: MemoryObjectReceiveStream[JobResult], out: MemoryObjectSendStream[JobResult]
    ) -> None:
        assert self.window is not None
        pending: dict[int, JobResult] = {}
        next_index = 0
        async with done:
            async for result in done:
                pending[result.index] = result
                while next_index in pending:
                    await out.send(pending.pop(next_index))
                    self.window.release()
                    next_index += 1

    async def _worker(
        self, items: MemoryObjectReceiveStream[Item], sink: MemoryObjectSendStream[JobResult]
    ) -> None:
        async with items, sink:
            async for item in items:
                result = await self.processor.process(item)
                self.stats.count(result)
                journal = self.processor.journal
                if journal is not None and not result.resumed:
                    # Written before the slot frees: a kill loses at most the jobs in flight.
                    journal.write(result.to_record())
                await sink.send(result)


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
