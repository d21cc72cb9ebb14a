"""The span of one batch, current in its background task while the batch runs."""

from __future__ import annotations

from typing import Any, Protocol

from .otel import Api
from .outcomes import error_type

__all__ = ["BATCH_SPAN", "BatchShape", "BatchTelemetry", "BatchTotals"]

BATCH_SPAN = "nanobanana batch"


# What the span reads of the batch package's options and stats (telemetry sits below it: no
# import of them), under names of its own.
class BatchShape(Protocol):
    @property
    def concurrency(self) -> int: ...
    @property
    def ordered(self) -> bool: ...
    @property
    def max_credits(self) -> int | None: ...
    @property
    def max_per_second(self) -> float | None: ...


class BatchTotals(Protocol):
    succeeded: int
    failed: int
    skipped: int
    resumed: int
    credits_estimated: int
    credits_spent: int
    credits_may_have_been_spent: int
    retries: int
    stopped_reason: str | None


class BatchTelemetry:
    """The span of one batch, current in its background task while the batch runs."""

    __slots__ = ("_api", "_span", "_token")

    def __init__(self, api: Api, tracer: Any, options: BatchShape) -> None:
        attributes: dict[str, Any] = {
            "nanobanana.batch.concurrency": options.concurrency,
            "nanobanana.batch.ordered": options.ordered,
        }
        if options.max_credits is not None:
            attributes["nanobanana.batch.max_credits"] = options.max_credits
        if options.max_per_second is not None:
            attributes["nanobanana.batch.max_per_second"] = options.max_per_second
        self._api = api
        self._span = tracer.start_span(BATCH_SPAN, attributes=attributes)
        self._token = api.context.attach(api.set_span_in_context(self._span))

    def end(self, stats: BatchTotals, failure: BaseException | None, completed: bool) -> None:
        """Detach the span, give it the batch's totals and end it. Same task as it started."""
        api = self._api
        api.context.detach(self._token)
        span = self._span
        attributes: dict[str, Any] = {
            "nanobanana.batch.jobs.succeeded": stats.succeeded,
            "nanobanana.batch.jobs.failed": stats.failed,
            "nanobanana.batch.jobs.skipped": stats.skipped,
            "nanobanana.batch.jobs.resumed": stats.resumed,
            "nanobanana.batch.credits.estimated": stats.credits_estimated,
            "nanobanana.batch.credits.spent": stats.credits_spent,
            "nanobanana.batch.credits.may_have_been_spent": stats.credits_may_have_been_spent,
            "nanobanana.batch.retries": stats.retries,
            "nanobanana.batch.completed": completed,
        }
        if stats.stopped_reason is not None:
            attributes["nanobanana.batch.stopped_reason"] = stats.stopped_reason
        if failure is not None:
            attributes["error.type"] = error_type(failure)
            span.set_status(api.error, str(failure))
        span.set_attributes(attributes)
        span.end()
