"""One job from input to result: resume, budget, rate, send, journal, downloads."""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs

from ..errors import (
    AuthenticationError,
    BudgetExceededError,
    InsufficientCreditsError,
    InvalidRequestError,
    NanoBananaError,
)
from ..limits import Caps, Layered
from ..models import Generation, Job
from ..retry import CallStats, RetryPolicy
from .files import download_images, in_directory
from .journal import JournalRecord
from .results import BatchStats, JobResult
from .sender import JobSender
from .stores import Begin, StoreError, StoreSession, StoreUnavailableError

__all__ = ["Item", "JobProcessor"]

logger = logging.getLogger("nanobanana_async")


@attrs.frozen
class Item:
    """A job as the producer hands it to a worker: its place, id, price and file stem."""

    index: int
    job: Job | None
    id: str | None
    cost: int = 0
    error: InvalidRequestError | None = None
    stem: str | None = None
    # A worker's job comes claimed from its store, with the store's Idempotency-Key.
    claimed: bool = False
    idempotency_key: str | None = None


_STOP_ERRORS = (AuthenticationError, InsufficientCreditsError)
_STORE_DOWN = "not sent: the job store is unavailable (the run ends with its error)"


class _LeaseLost(Exception):
    """Raised before the first attempt when the store no longer gives this run the job."""


class _StoreFailed(Exception):
    """Raised before an attempt when the store could not record it: the request is not sent.

    Not an SDK error, so the retry loop neither retries it nor counts it as an attempt.
    """

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


class _Stopped(Exception):
    """Raised before an attempt once the batch has stopped: the request is not sent.

    Not an SDK error, so the retry loop neither retries it nor counts it against the budget.
    """


class _Attempts:
    """The batch's side of each attempt of one job: the stop check before and after the waits,
    and (before the first, and before one that follows an attempt whose answer was lost) the
    store's ``sending`` record. Admission and settlement are the limits': the batch's caps
    over the client's (:class:`~nanobanana_async.limits.Layered`)."""

    __slots__ = ("_call", "_item", "_key", "_processor", "last_error", "recorded", "told")

    def __init__(
        self, processor: JobProcessor, item: Item, key: str | None, call: CallStats
    ) -> None:
        self._processor = processor
        self._item = item
        self._key = key
        self._call = call
        self.last_error: BaseException | None = None
        self.recorded = False  # the store holds this job as "sending"
        self.told = 0  # the may-have-been-spent credits the store has for this job

    async def before_attempt(self, admit: Callable[[], Awaitable[None]]) -> None:
        processor = self._processor
        if processor.stats.stopped_reason is not None:
            raise _Stopped
        # Budget, rate and the client's limits; released by the retry loop if not sent.
        await admit()
        store, item, uncertain = processor.store, self._item, self._call.uncertain
        if (
            store is not None
            and item.id is not None
            and (not self.recorded or uncertain > self.told)
        ):
            # Recorded (and committed) before the request leaves: a kill from here on leaves
            # the job visible as ambiguous, never silently sent again; and before a retry of
            # an attempt whose answer was lost, what that attempt may have cost.
            try:
                with anyio.CancelScope(shield=True):
                    sending = await store.sending(
                        item.id, self._key, item.cost, uncertain=uncertain
                    )
            except StoreError as exc:
                raise _StoreFailed(exc) from None
            if not sending:
                raise _LeaseLost
            self.recorded = True
            self.told = uncertain
        # Checked after the waits (budget, rate limits, 429 cool-down, retry backoff): a job
        # that was waiting when a 401 or "insufficient credits" came back must not send.
        if processor.stats.stopped_reason is not None:
            raise _Stopped

    def attempt_failed(self, outcome: BaseException) -> None:
        self.last_error = outcome


class JobProcessor:
    """Takes each job of a batch through budget, rate limit, sending, journal and downloads.

    A 401 or "insufficient credits" stops the batch: later jobs are skipped, and jobs already
    waiting (rate limit, cool-down, backoff) re-check the stop before they send. The journal
    gets a job's generation the moment its answer is read, and its files when they land.
    """

    def __init__(
        self,
        sender: JobSender,
        policy: RetryPolicy,
        stats: BatchStats,
        *,
        caps: Caps | None,
        download_dir: pathlib.Path | None,
        on_store_failure: Callable[[], object] = lambda: None,
    ) -> None:
        self.sender = sender
        self.policy = policy
        self.stats = stats
        # The batch's max_credits and max_per_second, layered over the client's limits for
        # each job; None: the client's limits alone.
        self.caps = caps
        self.download_dir = download_dir
        self.store: StoreSession | None = None
        # Why a job did not fit max_credits (the batch's or the client's limits'): a worker
        # stops claiming, since every job it claims next would be skipped and released again.
        self.over_budget: str | None = None
        # The store stopped answering: no more jobs are taken, and the run ends with this
        # (``on_store_failure`` wakes a worker waiting to poll the store again).
        self.store_failure: StoreError | None = None
        self._on_store_failure = on_store_failure
        # Jobs that a cancellation (a grace period that ran out, Ctrl-C twice) ended after
        # they were sent: counted in the stats at once, since no worker hands them over.
        self.unreported: list[JobResult] = []

    def stop(self, error: NanoBananaError) -> None:
        if self.stats.stopped_reason is None:
            what = (
                "insufficient credits"
                if isinstance(error, InsufficientCreditsError)
                else "the API key was rejected"
            )
            self.stats.stopped_reason = f"{what}: {error}"
            self.stats.stop_cause = (
                "insufficient_credits"
                if isinstance(error, InsufficientCreditsError)
                else "authentication"
            )
            logger.warning("batch stopped dispatching: %s", self.stats.stopped_reason)

    def store_failed(self, error: StoreError) -> None:
        """The store is gone (or cannot keep a result): take no more jobs, end with it."""
        if self.store_failure is None:
            self.store_failure = error
            logger.error("batch stops taking jobs: %s", error)
            self._on_store_failure()

    async def _journal(self, result: JobResult, *, status: str | None = None) -> JobResult:
        if self.store is not None:
            # Shielded: a result the server may have charged for must reach the store even
            # when the batch is being cancelled. A store that cannot take it keeps it in its
            # spool, or says the run must stop; the result is reported either way, and no
            # other job is touched.
            try:
                with anyio.CancelScope(shield=True):
                    await self.store.record(result, status=status)
            except StoreError as exc:
                self.store_failed(exc)
        return result

    def _not_recorded(self, item: Item, job: Job, error: StoreError) -> JobResult:
        """A job the store could not take: never sent. Down: skipped (the run stops);
        refused (this job's row alone): failed with the store's error."""
        if isinstance(error, StoreUnavailableError):
            self.store_failed(error)
            return JobResult(item.index, job, "skipped", item.id, reason=_STORE_DOWN)
        return JobResult(item.index, job, "failed", item.id, error=error)

    async def process(self, item: Item) -> JobResult:
        """The result of one job (resumed, skipped, failed or succeeded), journaled."""
        job = item.job
        if item.error is not None or job is None:
            return await self._journal(
                JobResult(item.index, job, "failed", item.id, error=item.error)
            )
        key = item.idempotency_key
        if self.store_failure is not None:
            return JobResult(item.index, job, "skipped", item.id, reason=_STORE_DOWN)
        if self.store is not None and item.id is not None and not item.claimed:
            try:
                begin = await self._begin(item.id, item.index, job)
            except StoreError as exc:
                return self._not_recorded(item, job, exc)
            if begin.record is not None:
                return await self._resume(item, job, begin.record)
            if begin.skip is not None:
                return JobResult(item.index, job, "skipped", item.id, reason=begin.skip)
            key = begin.idempotency_key
        self.stats.credits_estimated += item.cost
        if self.stats.stopped_reason is not None:
            return await self._journal(self._skipped_stopped(item, job))
        caps = self.caps
        limits = caps.over(self.sender.limits, item.cost) if caps is not None else None
        # The first attempt's credits are reserved before the job is dispatched: one that can
        # never fit is skipped unsent (and a worker stops claiming).
        if limits is not None and not await limits.hold():
            budget = caps.budget if caps is not None else None
            assert budget is not None  # only a budget refuses to hold
            reason = (
                f"over budget: needs {item.cost} credits, {budget.left} of "
                f"max_credits={budget.limit} left"
            )
            self.over_budget = self.over_budget or reason
            return await self._journal(
                JobResult(item.index, job, "skipped", item.id, reason=reason)
            )
        if self.stats.stopped_reason is not None:  # stopped while waiting for the budget
            if limits is not None:
                limits.release()
            return await self._journal(self._skipped_stopped(item, job))
        return await self._send(item, job, limits, key)

    async def _begin(self, job_id: str, index: int, job: Job) -> Begin:
        assert self.store is not None
        while True:
            with anyio.CancelScope(shield=True):
                begin = await self.store.begin(job_id, index, job)
            if begin.wait is None or self.stats.stopped_reason is not None:
                return begin
            # Another run holds the job: wait (cancellable) for it to finish or to expire.
            await anyio.sleep(begin.wait)

    async def _send(
        self, item: Item, job: Job, limits: Layered | None, key: str | None
    ) -> JobResult:
        call = CallStats()
        attempts = _Attempts(self, item, key, call)
        started = time.perf_counter()
        self.stats.started += 1
        self.stats.in_flight += 1
        try:
            generation = await self.sender.send(
                job, self.policy, call, attempts, idempotency_key=key, limits=limits
            )
        except NanoBananaError as exc:
            if isinstance(exc, BudgetExceededError) and call.attempts == 0:
                # The client's limits (max_credits of LocalLimits or RedisLimits) can never
                # hold this job: like the batch's own budget, it is skipped unsent.
                self.over_budget = self.over_budget or str(exc)
                return await self._journal(
                    JobResult(item.index, job, "skipped", item.id, reason=str(exc))
                )
            if limits is not None and exc is limits.refused:
                # The batch's max_credits has no room for a retry of an attempt whose answer
                # was lost: the job fails with what it may have cost.
                exc = NanoBananaError(
                    f"not retried after {call.attempts} attempt(s): {exc} while "
                    f"{call.uncertain} credits may have been spent on this job; last error: "
                    f"{attempts.last_error}"
                )
            if isinstance(exc, _STOP_ERRORS):
                self.stop(exc)
            error: NanoBananaError | None = exc
        except _LeaseLost:
            if call.attempts == 0:
                # A run writes a job's row when it records "sending": another run or worker
                # that recorded it first holds it (or this run's claim on it expired).
                reason = "another run or worker took this job first: not sent by this run"
                return JobResult(item.index, job, "skipped", item.id, reason=reason)
            reason = "another worker took this job (this run's lease on it expired): not sent"
            error = NanoBananaError(f"not retried after {call.attempts} attempt(s): {reason}")
        except _StoreFailed as failed:
            if call.attempts == 0:
                return self._not_recorded(item, job, failed.error)
            if isinstance(failed.error, StoreUnavailableError):
                self.store_failed(failed.error)
            error = NanoBananaError(
                f"not retried after {call.attempts} attempt(s): the job store could not "
                f"record the next one ({failed.error})"
            )
        except _Stopped:
            if limits is not None:
                limits.release()
            if call.attempts == 0:
                return await self._journal(self._skipped_stopped(item, job))
            error = NanoBananaError(
                f"not retried after {call.attempts} failed attempt(s): "
                f"batch stopped: {self.stats.stopped_reason}"
            )
        except BaseException:
            # Cancelled: an attempt in progress was settled by the limits (kept, since the
            # server may have charged it); a reservation no attempt used goes back.
            if limits is not None:
                limits.release()
            # Sent: reported, with what it may have cost, and recorded as such (ambiguous),
            # like any result: a store that cannot take it keeps it in its spool.
            ended = _cancelled_send(item, job, call, started)
            if attempts.recorded and self.store is not None and item.id is not None:
                try:
                    with anyio.CancelScope(shield=True):
                        if call.uncertain:
                            await self.store.record(ended)
                        else:  # every attempt sent got a clear answer: nothing was charged
                            await self.store.release(item.id)
                except StoreError as exc:
                    logger.warning(
                        "job %s was cancelled after its request left; the store did not "
                        "record that: %s",
                        item.id,
                        exc,
                    )
            if call.attempts:
                self._cancelled(ended)
            raise
        else:
            error = None
        finally:
            # A reservation held for an attempt that never came (stopped, cancelled, refused
            # before the first one) goes back.
            if limits is not None:
                limits.release()
            self.stats.in_flight -= 1
        if error is None:
            return await self._generated(item, job, generation, call, started)
        return await self._journal(
            JobResult(
                item.index,
                job,
                "failed",
                item.id,
                error=error,
                attempts=call.attempts,
                elapsed=time.perf_counter() - started,
                credits_may_have_been_spent=call.uncertain,
            )
        )

    async def _generated(
        self,
        item: Item,
        job: Job,
        generation: Generation,
        call: CallStats,
        started: float,
    ) -> JobResult:
        result = JobResult(
            item.index,
            job,
            "succeeded",
            item.id,
            generation=generation,
            attempts=call.attempts,
            elapsed=time.perf_counter() - started,
            credits=generation.credits,
            credits_may_have_been_spent=call.uncertain,
        )
        if self.download_dir is None or item.stem is None:
            return await self._journal(result)
        # Journaled before the downloads: a run stopped while they go on must not pay again;
        # the next run downloads what is missing.
        await self._journal(result, status="generated")
        try:
            paths, error = await download_images(
                self.sender, self.download_dir, item.stem, generation.urls, job.num
            )
        except BaseException:
            # Cancelled mid-download: the generation is paid for and journaled; it is counted
            # and reported as failed, and a rerun downloads its images without paying again.
            cancelled = NanoBananaError(
                f"generated ({generation.credits} credits), but its download was cancelled: "
                "run again with the same journal to download it without paying again"
            )
            result = attrs.evolve(result, status="failed", error=cancelled)
            self._cancelled(await self._journal(result))
            raise
        result = attrs.evolve(
            result,
            status="failed" if error else "succeeded",
            error=error,
            paths=paths,
            elapsed=time.perf_counter() - started,
        )
        return await self._journal(result)

    def _cancelled(self, result: JobResult) -> None:
        self.stats.count(result)
        self.unreported.append(result)

    def _skipped_stopped(self, item: Item, job: Job) -> JobResult:
        reason = f"batch stopped: {self.stats.stopped_reason}"
        return JobResult(item.index, job, "skipped", item.id, reason=reason)

    async def _resume(self, item: Item, job: Job, record: JournalRecord) -> JobResult:
        changed = record.mismatch(job)
        if changed:
            mismatch = InvalidRequestError(
                f"job id {item.id!r} is in the journal with a different "
                f"{', '.join(changed)}: its earlier result is not this job's. Give the changed "
                "job a new id, or use a new journal",
                param="id",
            )
            return JobResult(item.index, job, "failed", item.id, error=mismatch)
        generation = Generation(
            urls=record.urls,
            model=job.model,
            image_size=job.image_size,
            num=job.num,
            credits=record.credits,
            elapsed=0.0,
        )
        paths = tuple(pathlib.Path(p) for p in record.paths)
        directory = self.download_dir
        if directory is None or item.stem is None or _saved(paths, record.urls, directory):
            return JobResult(
                item.index,
                job,
                "succeeded",
                item.id,
                generation=generation,
                paths=paths,
                resumed=True,
            )
        paths, error = await download_images(
            self.sender, directory, item.stem, record.urls, job.num
        )
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
        # The files changed: record them so the next run need not download again.
        return await self._journal(result)


def _cancelled_send(item: Item, job: Job, call: CallStats, started: float) -> JobResult:
    lost = (
        f": the answer never came back, so {call.uncertain} credits may have been spent"
        if call.uncertain
        else ""
    )
    return JobResult(
        item.index,
        job,
        "failed",
        item.id,
        error=NanoBananaError(f"cancelled after {call.attempts} attempt(s){lost}"),
        attempts=call.attempts,
        elapsed=time.perf_counter() - started,
        credits_may_have_been_spent=call.uncertain,
    )


def _saved(paths: tuple[pathlib.Path, ...], urls: tuple[str, ...], directory: pathlib.Path) -> bool:
    """Every image of a journaled job is on disk in ``directory`` (not only elsewhere)."""
    return len(paths) == len(urls) and all(p.exists() and in_directory(p, directory) for p in paths)
