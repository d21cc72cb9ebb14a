"""``nanobanana batch --metrics-json FILE``: the run's figures, for pipelines to read.

The summary's figures (statuses, credits, time, latency percentiles, retries) plus what only
the client's hooks see: each request's outcome and latency, and the reason of each retry.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .exits import CLIError

if TYPE_CHECKING:
    from ..batch import BatchReport
    from ..telemetry import Hooks, ResponseEvent, RetryEvent

__all__ = ["RunRecorder", "metrics_document", "retries_line", "write_metrics_json"]

#: Bumped when a field changes meaning or goes away (new fields may appear at any time).
SCHEMA = 1


class RunRecorder:
    """Counts what the client's hooks report while a batch runs."""

    def __init__(self) -> None:
        self.retries_by_reason: Counter[str] = Counter()
        self.requests_by_outcome: Counter[str] = Counter()
        self.attempt_latencies: list[float] = []

    def hooks(self) -> Hooks:
        from ..telemetry import Hooks

        return Hooks(after_response=self._response, on_retry=self._retry)

    def _response(self, event: ResponseEvent) -> None:
        self.requests_by_outcome[event.outcome] += 1
        self.attempt_latencies.append(event.elapsed)

    def _retry(self, event: RetryEvent) -> None:
        self.retries_by_reason[event.reason] += 1


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def at(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 4)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def metrics_document(
    report: BatchReport,
    recorder: RunRecorder,
    *,
    source: str,
    jobs: int,
    interrupted: bool,
    emulator: bool,
    signal: str | None = None,
) -> dict[str, Any]:
    """The JSON document of a finished (or interrupted) run; ``signal`` is what stopped it
    (``SIGINT``, ``SIGTERM``)."""
    return {
        "schema": SCHEMA,
        "source": source,
        "emulator": emulator,
        "jobs": jobs,
        "finished": report.total,
        "not_run": jobs - report.total,
        "interrupted": interrupted,
        "signal": signal,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "skipped": report.skipped,
        "resumed": report.resumed,
        "partial": report.partial,
        "stopped_reason": report.stopped_reason,
        "credits": {
            "estimated": report.credits_estimated,
            "spent": report.credits_spent,
            "may_have_been_spent": report.credits_may_have_been_spent,
        },
        "elapsed_s": round(report.elapsed, 4),
        "job_latency_s": {
            "p50": _rounded(report.latency_p50),
            "p95": _rounded(report.latency_p95),
            "p99": _rounded(report.latency_p99),
        },
        "requests": {
            "total": sum(recorder.requests_by_outcome.values()),
            "by_outcome": dict(sorted(recorder.requests_by_outcome.items())),
            "latency_s": _percentiles(recorder.attempt_latencies),
        },
        "retries": {
            "total": report.retries,
            "by_reason": dict(sorted(recorder.retries_by_reason.items())),
        },
    }


def write_metrics_json(path: pathlib.Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically (a reader never sees half a file)."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2, ensure_ascii=False)
                out.write("\n")
            os.replace(temporary, path)
        except BaseException:
            pathlib.Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CLIError(f"cannot write --metrics-json {path}: {exc.strerror or exc}") from None


def retries_line(report: BatchReport, recorder: RunRecorder | None) -> str:
    """``3 (server_error 2, rate_limited 1)``: the summary's retries row."""
    text = str(report.retries)
    reasons = recorder.retries_by_reason if recorder is not None else None
    if reasons:
        text += " (" + ", ".join(f"{r} {n}" for r, n in reasons.most_common()) + ")"
    return text
