"""Where a batch's workers get their jobs: the caller's input, or a store's claims.

A feed hands out one :class:`Item` at a time (None at the end) to whichever worker asks: the
runner (``runner.py``) starts the workers; the feeds know the input, the job ids, the file
names and the claims.
"""

from __future__ import annotations

import abc
import logging
import pathlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import anyio

from ..errors import InvalidRequestError
from ..models import Job
from ..pricing import PricingTable, as_job
from .files import file_stem
from .journal import JobIds
from .options import BatchOptions, JobInput
from .process import Item, JobProcessor
from .results import BatchStats
from .sender import JobSender
from .stores import JobStore, StoredJob, StoreError

__all__ = ["CLAIM_CHUNK", "ClaimFeed", "Feed", "FeedHost", "InputFeed", "input_item", "stored_item"]

logger = logging.getLogger("nanobanana_async")

T = TypeVar("T")

CLAIM_CHUNK = 64


class FeedHost(Protocol):
    """What a feed needs of the runner it feeds (a :class:`~.runner.Runner`)."""

    sender: JobSender
    options: BatchOptions
    stats: BatchStats
    processor: JobProcessor
    store: JobStore | None
    download_dir: pathlib.Path | None
    stopping: bool

    async def wait_for_job(self, wait: Callable[..., Awaitable[T]], *args: Any) -> tuple[T] | None:
        """``(await wait(*args),)``, or None when the runner stops meanwhile."""
        ...


class Feed(abc.ABC):
    """The jobs of a batch, pulled by the workers one at a time; None at the end."""

    done = False
    error: Exception | None = None

    @abc.abstractmethod
    async def next(self) -> Item | None: ...

    async def aclose(self) -> None:
        return None


class InputFeed(Feed):
    """The caller's iterable or async iterable, consumed lazily.

    A plain iterable is advanced without awaiting (no two workers are ever inside ``next`` at
    once); an async iterable under a lock. The input failing is kept in ``error``, not
    raised: raising would cancel the jobs in flight, whose generations may already be paid
    for, and drop results that had finished. Pulling stops instead, the jobs handed out finish
    and are reported, and the batch then ends with the input's error.
    """

    def __init__(self, runner: FeedHost, jobs: JobInput) -> None:
        self._runner = runner
        self._pricing = runner.sender.pricing
        wants_ids = runner.store is not None or runner.download_dir is not None
        self._ids = JobIds() if wants_ids else None
        self._names = runner.download_dir is not None
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
        if self._runner.stopping:
            self.done = True  # stopped: the rest of the input is not run
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
                    pulled = await self._runner.wait_for_job(anext, self._async)
                    if pulled is None:
                        self.done = True
                        return None
                    (raw,) = pulled
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
        return input_item(index, raw, self._pricing, self._ids, self._names)

    async def aclose(self) -> None:
        # The batch consumes its input: an async one is closed when the batch ends.
        self.done = True
        generator, self._async = self._async, None
        if generator is not None:
            await generator.aclose()


class ClaimFeed(Feed):
    """A store worker's input: pending jobs claimed from the store, a chunk at a time.

    Claimed jobs not yet handed out when the run ends go back to pending when the session
    closes; a chunk is never larger than the concurrency.
    """

    def __init__(self, runner: FeedHost) -> None:
        self._runner = runner
        self._pricing = runner.sender.pricing
        self._names = runner.download_dir is not None
        self._chunk = min(CLAIM_CHUNK, runner.options.concurrency)
        self._claimed: deque[StoredJob] = deque()
        self._lock = anyio.Lock()

    async def next(self) -> Item | None:
        runner = self._runner
        async with self._lock:
            if self.done:
                return None
            store = runner.processor.store
            assert store is not None
            claimed = self._claimed
            try:
                while not claimed:
                    if self._stopping():
                        return None
                    claimed.extend(await store.claim(self._chunk))
                    if claimed:
                        break
                    # Nothing pending: hand back what dead or expired runs hold, look again.
                    await store.maintain()
                    claimed.extend(await store.claim(self._chunk))
                    if claimed:
                        break
                    if not runner.options.follow:
                        self.done = True
                        return None
                    await runner.wait_for_job(anyio.sleep, runner.options.poll_interval)
            except StoreError as exc:
                # Raised at the end, once the jobs in flight are settled and reported.
                self.done = True
                self.error = exc
                return None
            # Checked again after the claim too: a job skipped for the budget meanwhile went
            # back to pending, and this claim may hold it again (claimed rows still in the
            # deque go back to pending when the session closes).
            if self._stopping():
                return None
            return stored_item(claimed.popleft(), self._pricing, self._names)

    def _stopping(self) -> bool:
        runner, processor = self._runner, self._runner.processor
        if (
            runner.stats.stopped_reason is not None
            or processor.over_budget is not None
            or processor.store_failure is not None
        ):
            # What is left stays pending for other workers (or this one, rerun).
            self.done = True
        return self.done


def stored_item(stored: StoredJob, pricing: PricingTable, names: bool) -> Item:
    """The item of a job a worker claimed (``names``: it needs a file stem)."""
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
    return Item(
        stored.index,
        job,
        stored.id,
        cost,
        stem=file_stem(stored.id) if names else None,
        claimed=True,
        idempotency_key=stored.idempotency_key,
    )


def input_item(
    index: int,
    raw: Job | str,
    pricing: PricingTable,
    ids: JobIds | None,
    names: bool,
) -> Item:
    """The item of the input's job at ``index``: its id, price and file stem, or its error."""
    try:
        job = as_job(raw, pricing)
        cost = pricing.credits(job)
        job_id = ids.assign(job) if ids is not None else job.id
        stem = file_stem(job_id) if names and job_id is not None else None
        return Item(index, job, job_id, cost, stem=stem)
    except InvalidRequestError as exc:
        return Item(index, raw if isinstance(raw, Job) else None, None, error=exc)


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
