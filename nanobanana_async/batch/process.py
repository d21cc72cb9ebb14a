"""One job from input to result: resume, budget, rate, send, downloads."""

from __future__ import annotations

import logging
import pathlib
import time

import attrs

from ..errors import (
    APIConnectionError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    NanoBananaError,
)
from ..models import Generation, Job
from ..retry import CallStats, RetryPolicy
from .files import download_images
from .journal import Journal, JournalRecord
from .money import CreditBudget
from .rate import RateLimiter
from .results import BatchStats, JobResult
from .sender import JobSender

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


_STOP_ERRORS = (AuthenticationError, InsufficientCreditsError)


class _Stopped(Exception):
    """Raised before an attempt once the batch has stopped: the request is not sent.

    Not an SDK error, so the retry loop neither retries it nor counts it against the budget.
    """


class JobProcessor:
    """Takes each job of a batch through budget, rate limit, sending and downloads.

    A 401 or "insufficient credits" stops the batch: later jobs are skipped, and jobs already
    waiting (rate limit, cool-down, backoff) re-check the stop before they send.
    """

    def __init__(
        self,
        sender: JobSender,
        policy: RetryPolicy,
        stats: BatchStats,
        *,
        limiter: RateLimiter | None,
        budget: CreditBudget | None,
        download_dir: pathlib.Path | None,
    ) -> None:
        self.sender = sender
        self.policy = policy
        self.stats = stats
        self.limiter = limiter
        self.budget = budget
        self.download_dir = download_dir
        self.journal: Journal | None = None

    def stop(self, error: NanoBananaError) -> None:
        if self.stats.stopped_reason is None:
            what = (
                "insufficient credits"
                if isinstance(error, InsufficientCreditsError)
                else "the API key was rejected"
            )
            self.stats.stopped_reason = f"{what}: {error}"
            logger.warning("batch stopped dispatching: %s", self.stats.stopped_reason)

    def _skipped_stopped(self, item: Item, job: Job) -> JobResult:
        reason = f"batch stopped: {self.stats.stopped_reason}"
        return JobResult(item.index, job, "skipped", item.id, reason=reason)

    async def _before_attempt(self) -> None:
        if self.limiter is not None:
            await self.limiter.acquire()
        # Checked after the waits (rate limit, 429 cool-down, retry backoff): a job that was
        # waiting when a 401 or "insufficient credits" came back must not send anyway.
        if self.stats.stopped_reason is not None:
            raise _Stopped

    async def process(self, item: Item) -> JobResult:
        """The result of one job: resumed, skipped, failed or succeeded."""
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
            generation = await self.sender.send_job(job, self.policy, call, self._before_attempt)
        except NanoBananaError as exc:
            if self.budget is not None:
                # A job that may have been charged keeps its reservation: the budget must hold
                # even when the server billed a request whose answer we never saw.
                ambiguous = isinstance(exc, APIConnectionError) and exc.may_have_been_charged
                (self.budget.commit if ambiguous else self.budget.release)(cost)
            if isinstance(exc, _STOP_ERRORS):
                self.stop(exc)
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

    async def _resume(self, item: Item, job: Job, record: JournalRecord) -> JobResult:
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
        return await download_images(self.sender, self.download_dir, stem, urls)
