"""The batch runner: many jobs, bounded concurrency, budget, rate, journal and downloads."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import math
import os
import pathlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import attrs
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import (
    APIConnectionError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    NanoBananaError,
)
from .journal import JobIds, Journal, JournalRecord
from .models import Generation, Job
from .pricing import as_job
from .retry import CallStats

if TYPE_CHECKING:
    from .client import AsyncNanoBanana

__all__ = ["BatchOptions", "BatchReport", "BatchRun", "BatchStats", "JobResult"]

logger = logging.getLogger("nanobanana_async")

JobInput = Iterable[Job | str] | AsyncIterable[Job | str]
Status = Literal["succeeded", "failed", "skipped"]


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not value > 0 or math.isinf(value)):
        raise InvalidRequestError(
            f"{attr.name} must be a positive number, got {value!r}", param=attr.name
        )


def _positive_int(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(
            f"{attr.name} must be an integer >= 1, got {value!r}", param=attr.name
        )


def _credits_or_none(_inst: object, attr: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidRequestError(
            f"{attr.name} must be an integer >= 0 or None, got {value!r}", param=attr.name
        )


@attrs.frozen(kw_only=True)
class BatchOptions:
    """Options of :meth:`AsyncNanoBanana.batch` and :meth:`AsyncNanoBanana.run_batch`.

    - ``concurrency``: generate requests in flight at most.
    - ``max_credits``: budget; credits are reserved before a job is sent, so the batch never
      commits more. Jobs that cannot fit are ``skipped``.
    - ``max_per_second``: request starts per second, retries included; no one-second window
      holds more than ``floor(max_per_second)`` starts (one start per ``1/max_per_second``
      seconds below 1). Starts are spaced evenly, never in bursts, 50 ms per window apart
      beyond the limit so network jitter does not push the server's windows over it.
    - ``journal``: JSONL file of finished jobs; a rerun skips jobs already generated.
    - ``download_dir``: save each succeeded job's images there.
    - ``ordered``: yield results in input order (at most ``window`` jobs ahead).
    - ``max_retries`` / ``retry_ambiguous``: override the client's retry policy.
    """

    concurrency: int = attrs.field(default=8, validator=_positive_int)
    max_credits: int | None = attrs.field(default=None, validator=_credits_or_none)
    max_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)
    journal: str | os.PathLike[str] | None = None
    download_dir: str | os.PathLike[str] | None = None
    ordered: bool = False
    window: int | None = attrs.field(default=None)
    max_retries: int | None = None
    retry_ambiguous: bool | None = None

    @property
    def ordered_window(self) -> int:
        return max(self.window or 0, 2 * self.concurrency)


@attrs.frozen
class JobResult:
    """The outcome of one job of a batch; exactly one per input job.

    ``status`` is ``"succeeded"``, ``"failed"`` or ``"skipped"`` (not sent: over budget, or the
    batch stopped; ``reason`` says why). ``credits`` is what the job was charged by the
    pricing table: 0 unless it generated. ``resumed`` marks a job taken from the journal of
    an earlier run without a request. ``id`` is the job's id in journals and file names
    (``None`` when the batch has neither and the job sets none).
    """

    index: int
    job: Job | None
    status: Status
    id: str | None = None
    generation: Generation | None = None
    error: NanoBananaError | None = None
    reason: str | None = None
    attempts: int = 0
    elapsed: float = 0.0
    credits: int = 0
    paths: tuple[pathlib.Path, ...] = ()
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """True when the job succeeded."""
        return self.status == "succeeded"

    def to_record(self) -> dict[str, Any]:
        """The journal line for this result (JSON-ready; never contains the API key)."""
        job = self.job
        return {
            "id": self.id,
            "index": self.index,
            "status": self.status,
            "prompt": job.prompt if job else None,
            "model": job.model if job else None,
            "image_size": job.image_size if job else None,
            "num": job.num if job else None,
            "urls": list(self.generation.urls) if self.generation else [],
            "credits": self.credits,
            "attempts": self.attempts,
            "elapsed": round(self.elapsed, 4),
            "paths": [str(p) for p in self.paths],
            "error": str(self.error) if self.error else None,
            "reason": self.reason,
        }


@attrs.define
class BatchStats:
    """Live counters of a running batch (read them for progress displays)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    in_flight: int = 0
    credits_estimated: int = 0
    credits_spent: int = 0
    retries: int = 0
    stopped_reason: str | None = None

    @property
    def finished(self) -> int:
        """Jobs finished so far, whatever their status."""
        return self.succeeded + self.failed + self.skipped


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[rank]


@attrs.frozen
class BatchReport:
    """Everything about a finished batch: every result and the totals.

    ``credits_estimated`` is what the batch's jobs were priced at before sending (jobs resumed
    from a journal excluded); ``credits_spent`` what the succeeded jobs cost. Latency
    percentiles are over jobs that made requests. ``stopped_reason`` says why dispatch stopped
    early (an invalid key, insufficient credits), if it did.
    """

    results: tuple[JobResult, ...]
    succeeded: int
    failed: int
    skipped: int
    resumed: int
    credits_estimated: int
    credits_spent: int
    elapsed: float
    retries: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    stopped_reason: str | None

    @property
    def total(self) -> int:
        """Number of jobs in the report (one result per input job)."""
        return len(self.results)

    @property
    def ok(self) -> bool:
        """True when every job succeeded."""
        return self.succeeded == len(self.results)

    @classmethod
    def build(cls, results: Sequence[JobResult], stats: BatchStats, elapsed: float) -> BatchReport:
        """The report of a finished batch from its results and live counters."""
        latencies = sorted(r.elapsed for r in results if r.attempts)
        return cls(
            results=tuple(sorted(results, key=lambda r: r.index)),
            succeeded=stats.succeeded,
            failed=stats.failed,
            skipped=stats.skipped,
            resumed=stats.resumed,
            credits_estimated=stats.credits_estimated,
            credits_spent=stats.credits_spent,
            elapsed=elapsed,
            retries=stats.retries,
            latency_p50=_percentile(latencies, 0.50),
            latency_p95=_percentile(latencies, 0.95),
            latency_p99=_percentile(latencies, 0.99),
            stopped_reason=stats.stopped_reason,
        )


class RateLimiter:
    """At most ``limit`` starts in any window of ``window`` seconds, spaced evenly (no bursts).

    Consecutive starts are at least ``(window + margin) / limit`` seconds apart, so any
    ``limit + 1`` of them span more than ``window + margin``. Spacing, not a sliding window
    that lets ``limit`` starts through at once: the server measures arrival, not our start,
    and a burst sent on fresh connections arrives tens of milliseconds later than one on warm
    connections a window later, so the server would see two bursts in one window. Spaced
    starts absorb up to ``margin`` of such jitter; beyond it, one start more, not a burst.
    """

    _MARGIN = 0.05

    def __init__(self, per_second: float) -> None:
        if per_second >= 1:
            self.limit, self.window = int(per_second), 1.0
        else:
            self.limit, self.window = 1, 1.0 / per_second
        self.interval = (self.window + self._MARGIN) / self.limit
        self._next = -math.inf
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            delay = self._next - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            # From the actual start: a late wake-up never lets the next start come early.
            self._next = anyio.current_time() + self.interval


class CreditBudget:
    """Reserve-then-commit accounting that never lets committed credits exceed ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.committed = 0
        self.reserved = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def reserve(self, cost: int) -> bool:
        """Reserve ``cost``; False when it can never fit. Waits while in-flight reservations
        might be released."""
        while True:
            if self.committed + self.reserved + cost <= self.limit:
                self.reserved += cost
                return True
            if self.committed + cost > self.limit or self.reserved == 0:
                return False
            await self._changed.wait()

    def release(self, cost: int) -> None:
        self.reserved -= cost
        self._notify()

    def commit(self, cost: int) -> None:
        self.reserved -= cost
        self.committed += cost
        self._notify()

    @property
    def left(self) -> int:
        return self.limit - self.committed - self.reserved


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_MAX_NAME = 80


def file_stem(job_id: str, salt: int = 0) -> str:
    """The file-name stem for a job id: the id itself when it is a safe, short name, else a
    sanitised prefix plus a hash of the id (``salt`` picks another hash)."""
    stem = _UNSAFE.sub("_", job_id).strip("._") or "job"
    if stem != job_id or len(stem) > _MAX_NAME or salt:
        # Sanitising can map two ids to one name; a hash of the real id keeps them apart.
        key = job_id if not salt else f"{job_id}\x00{salt}"
        digest = hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
        stem = f"{stem[:_MAX_NAME]}-{digest}"
    return stem


def _image_stems(stem: str, count: int) -> list[str]:
    return [f"{stem}-{i + 1}" for i in range(count)] if count > 1 else [stem]


def image_filename(stem: str, position: int, count: int, url: str) -> str:
    """The file name of image ``position`` of ``count`` for a job whose stem is ``stem``."""
    suffix = pathlib.PurePosixPath(url.split("?", 1)[0]).suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        suffix = ".png"
    return _image_stems(stem, count)[position] + suffix


def safe_filename(job_id: str, position: int, count: int, url: str) -> str:
    """A file name for image ``position`` of a job that cannot escape the directory."""
    return image_filename(file_stem(job_id), position, count, url)


class FileNames:
    """Gives each job of a batch a stem no other image of the batch uses.

    Job ``two`` with two images saves ``two-1.png`` and ``two-2.png``; a job whose id is
    literally ``two-1`` must not overwrite the first, so it gets a hashed stem instead. Stems
    are claimed in input order, so a rerun of the same input names every file the same way.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, job_id: str, count: int) -> str:
        salt = 0
        stem = file_stem(job_id)
        while any(s in self._taken for s in _image_stems(stem, count)):
            salt += 1
            stem = file_stem(job_id, salt)
        self._taken.update(_image_stems(stem, count))
        return stem


@attrs.frozen
class _Item:
    index: int
    job: Job | None
    id: str | None
    cost: int = 0
    error: InvalidRequestError | None = None
    stem: str | None = None


_STOP_ERRORS = (AuthenticationError, InsufficientCreditsError)


class _Stopped(Exception):
    """Raised before an attempt once the batch has stopped: the request is not sent.

    Not an SDK error, so the retry loop neither retries it nor counts it against the budget.
    """


class _Runner:
    """Runs one batch: a producer pulls jobs lazily, ``concurrency`` workers process them."""

    def __init__(self, client: AsyncNanoBanana, jobs: JobInput, options: BatchOptions) -> None:
        if not isinstance(jobs, Iterable | AsyncIterable) or isinstance(jobs, str | bytes):
            raise InvalidRequestError(
                "jobs must be an iterable or async iterable of Job or prompt strings "
                f"(a single string is not: wrap it in a list), got {type(jobs).__name__}",
                param="jobs",
            )
        self.client = client
        self.jobs = jobs
        self.options = options
        self.policy = client.policy_for(options.max_retries, options.retry_ambiguous)
        self.stats = BatchStats()
        self.limiter = RateLimiter(options.max_per_second) if options.max_per_second else None
        self.budget = CreditBudget(options.max_credits) if options.max_credits is not None else None
        self.download_dir = (
            pathlib.Path(options.download_dir) if options.download_dir is not None else None
        )
        self.journal: Journal | None = None
        self.window = anyio.Semaphore(options.ordered_window) if options.ordered else None

    async def run(self, out: MemoryObjectSendStream[JobResult]) -> None:
        async with out:
            if self.download_dir is not None:
                await anyio.Path(self.download_dir).mkdir(parents=True, exist_ok=True)
            if self.options.journal is not None:
                self.journal = await anyio.to_thread.run_sync(Journal, self.options.journal)
            try:
                await self._run(out)
            finally:
                if self.journal is not None:
                    self.journal.close()
        logger.info(
            "batch finished: %d succeeded, %d failed, %d skipped, %d credits",
            self.stats.succeeded,
            self.stats.failed,
            self.stats.skipped,
            self.stats.credits_spent,
        )

    async def _run(self, out: MemoryObjectSendStream[JobResult]) -> None:
        send_items, receive_items = anyio.create_memory_object_stream[_Item](0)
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

    async def _produce(self, send: MemoryObjectSendStream[_Item]) -> Exception | None:
        """Feed the workers; the caller's input failing is returned, not raised.

        Raising would cancel the jobs in flight, whose generations may already be paid for,
        and drop results that had finished: instead pulling stops, the jobs handed out finish
        and are reported, and the batch then ends with the input's error.
        """
        ids = JobIds() if self.journal is not None or self.download_dir is not None else None
        names = FileNames() if self.download_dir is not None else None
        pricing = self.client.pricing
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
                            item = _Item(index, job, job_id, cost, stem=stem)
                        except InvalidRequestError as exc:
                            item = _Item(
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
        self, items: MemoryObjectReceiveStream[_Item], sink: MemoryObjectSendStream[JobResult]
    ) -> None:
        async with items, sink:
            async for item in items:
                result = await self._process(item)
                self._count(result)
                if self.journal is not None and not result.resumed:
                    # Written before the slot frees: a kill loses at most the jobs in flight.
                    self.journal.write(result.to_record())
                await sink.send(result)

    def _count(self, result: JobResult) -> None:
        stats = self.stats
        if result.status == "succeeded":
            stats.succeeded += 1
            stats.resumed += result.resumed
        elif result.status == "failed":
            stats.failed += 1
        else:
            stats.skipped += 1
        stats.credits_spent += result.credits
        stats.retries += max(0, result.attempts - 1)

    def _stop(self, error: NanoBananaError) -> None:
        if self.stats.stopped_reason is None:
            what = (
                "insufficient credits"
                if isinstance(error, InsufficientCreditsError)
                else "the API key was rejected"
            )
            self.stats.stopped_reason = f"{what}: {error}"
            logger.warning("batch stopped dispatching: %s", self.stats.stopped_reason)

    def _skipped_stopped(self, item: _Item, job: Job) -> JobResult:
        reason = f"batch stopped: {self.stats.stopped_reason}"
        return JobResult(item.index, job, "skipped", item.id, reason=reason)

    async def _before_attempt(self) -> None:
        if self.limiter is not None:
            await self.limiter.acquire()
        # Checked after the waits (rate limit, 429 cool-down, retry backoff): a job that was
        # waiting when a 401 or "insufficient credits" came back must not send anyway.
        if self.stats.stopped_reason is not None:
            raise _Stopped

    async def _process(self, item: _Item) -> JobResult:
        job = item.job
        if item.error is not None or job is None:
            return JobResult(item.index, job, "failed", item.id, error=item.error)
        if self.journal is not None and item.id is not None:
            record = self.journal.resumable(item.id)
            if record is not None:
                return await self._resume(item, job, record)
        cost = item.cost
        self.stats.credits_estimated += cost
        if self.stats.stopped_reason is not None:
            return self._skipped_stopped(item, job)
        if self.budget is not None and not await self.budget.reserve(cost):
            return JobResult(
                item.index,
                job,
                "skipped",
                item.id,
                reason=(
                    f"over budget: needs {cost} credits, {self.budget.left} of "
                    f"max_credits={self.budget.limit} left"
                ),
            )
        if self.stats.stopped_reason is not None:  # stopped while waiting for budget
            if self.budget is not None:
                self.budget.release(cost)
            return self._skipped_stopped(item, job)
        call = CallStats()
        started = time.perf_counter()
        self.stats.started += 1
        self.stats.in_flight += 1
        try:
            generation = await self.client._generate(job, self.policy, call, self._before_attempt)
        except NanoBananaError as exc:
            if self.budget is not None:
                # A job that may have been charged keeps its reservation: the budget must hold
                # even when the server billed a request whose answer we never saw.
                ambiguous = isinstance(exc, APIConnectionError) and exc.may_have_been_charged
                (self.budget.commit if ambiguous else self.budget.release)(cost)
            if isinstance(exc, _STOP_ERRORS):
                self._stop(exc)
            return JobResult(
                item.index,
                job,
                "failed",
                item.id,
                error=exc,
                attempts=call.attempts,
                elapsed=time.perf_counter() - started,
            )
        except _Stopped:
            if self.budget is not None:
                # An earlier attempt may have been charged only if ambiguous ones are retried.
                charged = call.attempts > 0 and self.policy.retry_ambiguous
                (self.budget.commit if charged else self.budget.release)(cost)
            if call.attempts == 0:
                return self._skipped_stopped(item, job)
            return JobResult(
                item.index,
                job,
                "failed",
                item.id,
                error=NanoBananaError(
                    f"not retried after {call.attempts} failed attempt(s): "
                    f"batch stopped: {self.stats.stopped_reason}"
                ),
                attempts=call.attempts,
                elapsed=time.perf_counter() - started,
            )
        except BaseException:
            if self.budget is not None:
                self.budget.commit(cost)
            raise
        finally:
            self.stats.in_flight -= 1
        if self.budget is not None:
            self.budget.commit(cost)
        paths: tuple[pathlib.Path, ...] = ()
        error: NanoBananaError | None = None
        if self.download_dir is not None and item.stem is not None:
            paths, error = await self._download(item.stem, generation.urls)
        return JobResult(
            item.index,
            job,
            "failed" if error else "succeeded",
            item.id,
            generation=generation,
            error=error,
            attempts=call.attempts,
            elapsed=time.perf_counter() - started,
            credits=generation.credits,
            paths=paths,
        )

    async def _resume(self, item: _Item, job: Job, record: JournalRecord) -> JobResult:
        generation = Generation(
            urls=record.urls,
            model=job.model,
            image_size=job.image_size,
            num=job.num,
            credits=record.credits,
            elapsed=0.0,
        )
        paths = tuple(pathlib.Path(p) for p in record.paths)
        on_disk = len(paths) == len(record.urls) and all(p.exists() for p in paths)
        if self.download_dir is not None and item.stem is not None and not on_disk:
            paths, error = await self._download(item.stem, record.urls)
            result = JobResult(
                item.index,
                job,
                "failed" if error else "succeeded",
                item.id,
                generation=generation,
                error=error,
                paths=paths,
                resumed=True,
            )
            if self.journal is not None:
                # The files changed: record them so the next run need not download again.
                self.journal.write(result.to_record())
            return result
        return JobResult(
            item.index, job, "succeeded", item.id, generation=generation, paths=paths, resumed=True
        )

    async def _download(
        self, stem: str, urls: tuple[str, ...]
    ) -> tuple[tuple[pathlib.Path, ...], NanoBananaError | None]:
        assert self.download_dir is not None
        paths: list[pathlib.Path | None] = [None] * len(urls)
        errors: list[NanoBananaError] = []

        async def fetch(position: int, url: str) -> None:
            assert self.download_dir is not None
            target = self.download_dir / image_filename(stem, position, len(urls), url)
            try:
                paths[position] = await self.client.download(url, target)
            except NanoBananaError as exc:
                errors.append(exc)
            except OSError as exc:
                errors.append(NanoBananaError(f"could not save {target}: {exc.strerror or exc}"))

        async with anyio.create_task_group() as tg:
            for position, url in enumerate(urls):
                tg.start_soon(fetch, position, url)
        saved = tuple(p for p in paths if p is not None)
        if errors:
            return saved, NanoBananaError(
                f"generated, but {len(errors)} of {len(urls)} image(s) could not be downloaded: "
                f"{errors[0]}"
            )
        return saved, None


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
    failure: BaseException | None = None
    ended: float | None = None
    task: Any = None


async def _run_in_background(
    runner: _Runner, state: _Background, send: MemoryObjectSendStream[JobResult]
) -> None:
    try:
        with state.scope:
            try:
                await runner.run(send)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # handed to the consumer, never lost
                state.failure = exc
    finally:
        state.ended = time.perf_counter()
        state.finished.set()
        runner.client._batches.discard(state)


class BatchRun:
    """The async iterator returned by :meth:`AsyncNanoBanana.batch`.

    Results arrive as jobs finish (in input order with ``ordered=True``). The work runs in a
    background task tied to this object: breaking out of ``async for``, cancelling the scope
    around it, or :meth:`aclose` cancels the requests in flight. ``async with`` around it also
    waits for that background task to end. ``stats`` are live counters.
    """

    def __init__(self, client: AsyncNanoBanana, jobs: JobInput, options: BatchOptions) -> None:
        # Set before the runner, which validates ``jobs`` and may raise: ``__del__`` still runs
        # on the half-built object and reads these.
        self._receive: MemoryObjectReceiveStream[JobResult] | None = None
        self._state: _Background | None = None
        self._runner = _Runner(client, jobs, options)

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

    def _start(self) -> MemoryObjectReceiveStream[JobResult]:
        send, receive = anyio.create_memory_object_stream[JobResult](
            self._runner.options.concurrency
        )
        self._receive = receive
        state = self._state = _Background(anyio.CancelScope(), anyio.Event(), time.perf_counter())
        # The client cancels and awaits its running batches before it closes its connections.
        self._runner.client._batches.add(state)
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
                name="nanobanana batch",
                context=contextvars.copy_context(),
            )
        else:
            import asyncio

            state.task = asyncio.get_running_loop().create_task(
                _run_in_background(self._runner, state, send), name="nanobanana batch"
            )
        return receive

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JobResult:
        receive = self._receive or self._start()
        try:
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

    def _cancel(self) -> None:
        if self._state is not None:
            self._state.scope.cancel()

    async def aclose(self) -> None:
        """Cancel what is in flight and wait (up to a few seconds) for the batch to end."""
        self._cancel()
        if self._state is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._state.finished.wait()
        if self._receive is not None:
            self._receive.close()

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
        """A :class:`BatchReport` over ``results`` with this batch's totals."""
        return BatchReport.build(results, self.stats, self.elapsed)


async def run_to_report(run: BatchRun) -> BatchReport:
    """Drain ``run`` and build its report."""
    results: list[JobResult] = []
    async with run:
        async for result in run:
            results.append(result)
    return run.report(results)
