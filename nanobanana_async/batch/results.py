"""What a batch hands back: one JobResult per job, live BatchStats, the final BatchReport."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ..errors import NanoBananaError
from ..models import Generation, Job

__all__ = ["BatchReport", "BatchStats", "JobResult", "Status", "StopCause"]

Status = Literal["succeeded", "failed", "skipped"]
StopCause = Literal["authentication", "insufficient_credits", "budget", "stopped"]
"""Why a batch or worker stopped early: the key was rejected; the account has no credits
left; the budget (``max_credits`` of the batch or of the client's limits) has no room for the
next job (workers: the jobs not run stay pending); :meth:`BatchRun.stop` was called (a
signal, in the command line)."""


@attrs.frozen
class JobResult:
    """The outcome of one job of a batch; exactly one per input job.

    ``status`` is ``"succeeded"``, ``"failed"`` or ``"skipped"`` (not sent: over budget, or the
    batch stopped; ``reason`` says why). ``credits`` is what the job was charged by the
    pricing table: 0 unless it generated. ``credits_may_have_been_spent`` counts attempts
    whose answer was lost after the request was sent (a dropped connection, an unreadable
    success body): the server may or may not have charged them, so the budget kept them.
    ``resumed`` marks a job taken from the journal of an earlier run without a request.
    ``id`` is the job's id in journals and file names (``None`` when the batch has neither
    and the job sets none).
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
    credits_may_have_been_spent: int = 0

    @property
    def ok(self) -> bool:
        """True when the job succeeded."""
        return self.status == "succeeded"

    @property
    def may_have_been_charged(self) -> bool:
        """Some attempt of this job may have been charged without its answer being read."""
        return self.credits_may_have_been_spent > 0

    @property
    def partial(self) -> bool:
        """The job generated fewer images than it asked for (see :attr:`Generation.partial`)."""
        return self.generation is not None and self.generation.partial

    def to_record(self, *, status: str | None = None) -> dict[str, Any]:
        """The journal line for this result (JSON-ready; never contains the API key).

        ``status`` overrides the result's own: the runner journals ``"generated"`` the moment
        an answer is read, before the images are downloaded. A job that failed after a
        request whose answer was lost is journaled ``"ambiguous"``: it may have been charged.
        """
        job = self.job
        generation = self.generation
        if status is None:
            ambiguous = self.status == "failed" and generation is None
            status = "ambiguous" if ambiguous and self.may_have_been_charged else self.status
        return {
            "id": self.id,
            "index": self.index,
            "status": status,
            "prompt": job.prompt if job else None,
            "model": job.model if job else None,
            "image_size": job.image_size if job else None,
            "num": job.num if job else None,
            "urls": list(generation.urls) if generation else [],
            "credits": self.credits,
            "credits_may_have_been_spent": self.credits_may_have_been_spent,
            "partial": self.partial,
            "extra_images": generation.extra_images if generation else 0,
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
    credits_may_have_been_spent: int = 0
    partial: int = 0
    retries: int = 0
    stopped_reason: str | None = None
    stop_cause: StopCause | None = None

    @property
    def finished(self) -> int:
        """Jobs finished so far, whatever their status."""
        return self.succeeded + self.failed + self.skipped

    def count(self, result: JobResult) -> None:
        """Count a finished job."""
        if result.status == "succeeded":
            self.succeeded += 1
            self.resumed += result.resumed
        elif result.status == "failed":
            self.failed += 1
        else:
            self.skipped += 1
        self.credits_spent += result.credits
        self.credits_may_have_been_spent += result.credits_may_have_been_spent
        self.partial += result.partial and not result.resumed
        self.retries += max(0, result.attempts - 1)


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[rank]


_SHOWN_FAILURES = 3  # failures named in repr() and str(): the rest are in .results
_SHOWN_CHARS = 160  # of each failure's message


def _problem(result: JobResult) -> str:
    what = result.reason
    if result.error is not None:
        what = f"{type(result.error).__name__}: {result.error}"
    what = " ".join((what or result.status).split())
    if len(what) > _SHOWN_CHARS:
        what = what[: _SHOWN_CHARS - 3] + "..."
    name = f" ({result.id})" if result.id else ""
    return f"#{result.index + 1}{name} {result.status}: {what}"


@attrs.frozen(repr=False)
class BatchReport:
    """Everything about a finished batch: every result and the totals.

    ``credits_estimated`` is what the batch's jobs were priced at before sending (jobs resumed
    from a journal excluded); ``credits_spent`` what the jobs that generated cost.
    ``credits_may_have_been_spent`` adds up attempts whose answer was lost after the request
    was sent: the server may have charged them or not, so the most the batch can have cost is
    ``credits_spent + credits_may_have_been_spent``, and that never exceeds ``max_credits``.
    ``partial`` counts jobs answered with fewer images than asked (charged per image). Latency
    percentiles are over jobs that made requests. ``stopped_reason`` says why dispatch stopped
    early (an invalid key, insufficient credits, a worker's budget, :meth:`BatchRun.stop`), if
    it did, and ``stop_cause`` says it in one word (:data:`StopCause`).

    ``repr()`` and ``str()`` stay short whatever the size of the batch: the counts, the
    credits and the first failures (every result is in ``results``).
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
    credits_may_have_been_spent: int = 0
    partial: int = 0
    stop_cause: StopCause | None = None

    @property
    def total(self) -> int:
        """Number of jobs in the report (one result per input job)."""
        return len(self.results)

    @property
    def ok(self) -> bool:
        """True when every job succeeded."""
        return self.succeeded == len(self.results)

    def failures(self, limit: int | None = None) -> list[JobResult]:
        """The results that did not succeed (failed or skipped), in input order; the first
        ``limit`` of them if given."""
        found: list[JobResult] = []
        for result in self.results:
            if limit is not None and len(found) >= limit:
                break
            if not result.ok:
                found.append(result)
        return found

    def __repr__(self) -> str:
        shown = self.failures(_SHOWN_FAILURES)
        more = self.failed + self.skipped - len(shown)
        failures = "; ".join(_problem(r) for r in shown) + (f"; {more} more" if more > 0 else "")
        return (
            f"<BatchReport {self.total} jobs: {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.skipped} skipped; credits {self.credits_spent} spent, "
            f"{self.credits_estimated} estimated, {self.credits_may_have_been_spent} may have "
            f"been spent; {self.elapsed:.1f} s"
            + (f"; stopped: {self.stopped_reason}" if self.stopped_reason else "")
            + (f"; first failures: {failures}" if shown else "")
            + ">"
        )

    def __str__(self) -> str:
        lines = [
            f"{self.total} jobs in {self.elapsed:.1f} s: {self.succeeded} succeeded, "
            f"{self.failed} failed, {self.skipped} skipped ({self.resumed} resumed, "
            f"{self.partial} partial, {self.retries} retries)",
            f"credits: {self.credits_spent} spent, {self.credits_estimated} estimated, "
            f"{self.credits_may_have_been_spent} may have been spent",
        ]
        if self.stopped_reason:
            lines.append(f"stopped: {self.stopped_reason}")
        shown = self.failures(_SHOWN_FAILURES)
        lines += [f"  {_problem(r)}" for r in shown]
        more = self.failed + self.skipped - len(shown)
        if more > 0:
            lines.append(f"  ... and {more} more (report.failures())")
        return "\n".join(lines)

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
            credits_may_have_been_spent=stats.credits_may_have_been_spent,
            partial=stats.partial,
            stop_cause=stats.stop_cause,
        )
