"""One generate call's telemetry: its span, its attempts' spans, its sums and its hook events.

Spans: a call that makes one attempt is one span, the call's, which carries that attempt's
status code (as HTTP client instrumentations do: no separate span for the only attempt). Only
when a call retries does each attempt get a span of its own under the call's: the first one's
is made then, with the times and outcome it had (its request carried the call span's
context as ``traceparent``), the next ones as they are sent.

Context: the generate span is never made current (attempt spans name it as their parent);
the context of the attempt (its span, or the call's for a first attempt) is current only while
its request is sent, on the task that sends it. No span is ever held current across a
``yield`` of an async generator.

Cost: this runs on every call, so each step is done once and only when someone listens. The
sampler's decision is read once: a call whose span is not recorded builds no attribute after
its start and keeps nothing for an attempt span that would not be recorded either (its
context still goes out as ``traceparent``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from ..errors import APIError, NanoBananaError, may_have_charged
from ..models import Generation, Job
from .events import AttemptEvent, Hooks, ResponseEvent, RetryEvent, call_hook
from .otel import Api, Instruments, Totals
from .outcomes import error_type, outcome_of

__all__ = ["GENERATE_SPAN", "CallTelemetry", "Sink"]

T = TypeVar("T")

GENERATE_SPAN = "nanobanana generate"

# A first attempt's start and end (ns), status, outcome (of a failure), may have been charged,
# error.type and the cool-down it waited.
_FirstAttempt = tuple[int, int, "int | None", "str | None", bool, "str | None", float]


class Sink(Protocol):
    """What a call reads of its client's :class:`~.sink.Telemetry` (built once per client)."""

    hooks: Hooks | None
    api: Api | None
    tracer: Any
    totals: Totals | None
    instruments: Instruments | None
    span_name: str
    span_attributes: dict[str, Any]
    http_metric: dict[tuple[int | None, str | None], dict[str, Any]]
    call_metric: dict[tuple[str, str | None], dict[str, Any]]

    def suppressed(self, context: Any) -> Any: ...
    def http_metric_attributes(self, status: int | None, error: str | None) -> dict[str, Any]: ...
    def call_metric_attributes(self, model: str, error: str | None) -> dict[str, Any]: ...


class CallTelemetry:
    """One generate call: its span, its attempts' spans, its sums and its hook events."""

    __slots__ = (
        "_attempt_status",
        "_attempts",
        "_context",
        "_cooldown_total",
        "_cooldown_wait",
        "_credits",
        "_current",
        "_first",
        "_first_started",
        "_headers",
        "_job",
        "_key",
        "_last_ended",
        "_last_error",
        "_model",
        "_parent",
        "_recording",
        "_span",
        "_started",
        "_telemetry",
        "_uncertain",
    )

    def __init__(self, telemetry: Sink, job: Job, credits: int, key: str, started: float) -> None:
        self._telemetry = telemetry
        self._job = job
        self._model = model = job.model
        self._credits = credits
        self._key = key
        self._started = started  # perf_counter() when the call began
        self._attempts = 0
        self._last_error: BaseException | None = None
        self._last_ended = 0.0
        self._cooldown_wait = 0.0
        self._cooldown_total = 0.0
        self._uncertain = 0
        self._attempt_status: int | None = None
        self._headers: Mapping[str, str] | None = None
        self._span: Any = None
        self._recording = False
        # The context the call's span was started in; that context with the call's span in
        # it (the parent of attempt spans, what a first attempt sends as traceparent), made
        # when first needed; the context of the attempt in flight, or of the last one.
        self._parent: Any = None
        self._context: Any = None
        self._current: Any = None
        # A recorded call's first attempt, which has no span of its own unless the call
        # retries: when it was sent (time.time_ns), then, once it ended, its start and end,
        # status, outcome (of a failure), may have been charged, error.type and cool-down.
        self._first_started = 0
        self._first: _FirstAttempt | None = None
        tracer = telemetry.tracer
        if tracer is not None:
            api = telemetry.api
            assert api is not None
            self._parent = context = api.context.get_current()
            # Few attributes: each costs the SDK a few microseconds on every call. Given at the
            # start, where a sampler can read them.
            attributes: dict[str, Any] = {
                "nanobanana.model": model,
                "nanobanana.image_size": job.image_size,
                "nanobanana.num": job.num,
            }
            if job.id is not None:
                attributes["nanobanana.job.id"] = job.id
            self._span = span = tracer.start_span(GENERATE_SPAN, context, attributes=attributes)
            self._recording = span.is_recording()
        totals = telemetry.totals
        if totals is not None:
            active = totals.active
            active[model] = active.get(model, 0) + 1

    # -- what the client and the retry loop report ----------------------------------------------

    def cooled_down(self, seconds: float) -> None:
        """The next attempt waited ``seconds`` for the client's 429 cool-down."""
        self._cooldown_wait += seconds
        self._cooldown_total += seconds
        totals = self._telemetry.totals
        if totals is not None:
            totals.cooldown[0] += seconds

    def responded(self, status: int, headers: Mapping[str, str]) -> None:
        """The attempt in flight got an HTTP response (before its body is interpreted)."""
        self._attempt_status = status
        self._headers = headers

    async def attempt(self, send: Callable[[], Awaitable[T]], headers: dict[str, str]) -> T:
        """Run one attempt, ``send()``, around its hooks and span; ``traceparent`` goes into
        ``headers`` (the request's) while the attempt's span is current."""
        telemetry = self._telemetry
        hooks = telemetry.hooks
        totals = telemetry.totals
        self._attempts = number = self._attempts + 1
        reason: str | None = None
        previous = self._last_error
        if previous is not None:
            reason = outcome_of(previous)
            if totals is not None:
                retries = totals.retries
                retry_key = (self._model, reason)
                retries[retry_key] = retries.get(retry_key, 0) + 1
            if hooks is not None and hooks.on_retry is not None:
                waited = time.perf_counter() - self._last_ended
                event = RetryEvent(self._job, number, self._key, reason, previous, waited)
                await call_hook("on_retry", hooks.on_retry, event)
        if hooks is not None and hooks.before_attempt is not None:
            await call_hook(
                "before_attempt", hooks.before_attempt, AttemptEvent(self._job, number, self._key)
            )
        self._attempt_status = None
        self._headers = None
        span = token = None
        if self._span is not None:
            span, token = self._open(number, reason, headers)
        if totals is not None:
            reserved = totals.reserved
            reserved[self._model] = reserved.get(self._model, 0) + self._credits
        started = time.perf_counter()
        try:
            result = await send()
        except BaseException as exc:
            ended = time.perf_counter()
            charged = self._close(span, token, exc, started, ended)
            after = None if hooks is None else hooks.after_response
            if after is not None and isinstance(exc, Exception):
                await self._after_response(after, number, exc, ended - started, charged)
            raise
        ended = time.perf_counter()
        self._close(span, token, None, started, ended)
        if hooks is not None and hooks.after_response is not None:
            await self._after_response(hooks.after_response, number, None, ended - started, False)
        return result

    def _open(self, number: int, reason: str | None, headers: dict[str, str]) -> Any:
        """Make the attempt's context current (and its span, if it has one); its traceparent
        into ``headers``. Returns the attempt's span (or None) and the context's token."""
        api = self._telemetry.api
        assert api is not None
        call = self._context
        if call is None:
            call = self._call_context()
        span = None
        if not self._recording or number == 1:
            # The call's trace was not sampled: its attempts' spans would not be either. Or
            # the first attempt: the call's span stands for it unless the call retries. The
            # call's context goes out as traceparent, no span is made.
            current = call
            if self._recording:
                self._first_started = time.time_ns()
        else:
            if self._first is not None:
                self._first_attempt_span(call)
            cooldown, self._cooldown_wait = self._cooldown_wait, 0.0
            span = self._start_attempt_span(number, reason, call, cooldown, None)
            current = api.set_span_in_context(span, call)
        self._current = current
        api.propagate.inject(headers, context=current)
        return span, api.context.attach(current)

    def _call_context(self) -> Any:
        """The context with the call's span in it (None without tracing), made once. It tells
        HTTP instrumentations to stand aside (see ``Api.suppress_key``): only ever current
        while a request of the call is sent, where they must add no span of their own."""
        api = self._telemetry.api
        if self._context is None and api is not None and self._span is not None:
            parent = self._telemetry.suppressed(self._parent)
            self._context = api.set_span_in_context(self._span, parent)
        return self._context

    def _start_attempt_span(
        self, number: int, reason: str | None, parent: Any, cooldown: float, start: int | None
    ) -> Any:
        telemetry = self._telemetry
        api = telemetry.api
        assert api is not None
        assert telemetry.tracer is not None
        attributes = dict(telemetry.span_attributes)
        attributes["nanobanana.attempt"] = number
        if reason is not None:
            attributes["http.request.resend_count"] = number - 1
            attributes["nanobanana.retry.reason"] = reason
        if cooldown:
            attributes["nanobanana.cooldown.wait"] = cooldown
        return telemetry.tracer.start_span(
            telemetry.span_name,
            context=parent,
            kind=api.client_kind,
            attributes=attributes,
            start_time=start,
        )

    def _first_attempt_span(self, parent: Any) -> None:
        """The call retries: its first attempt gets the span it would have had."""
        first = self._first
        assert first is not None
        self._first = None
        started, ended, status, outcome, charged, failure, cooldown = first
        span = self._start_attempt_span(1, None, parent, cooldown, started)
        self._end_attempt_span(span, status, outcome, charged, failure, ended)

    def _end_attempt_span(
        self,
        span: Any,
        status: int | None,
        outcome: str | None,
        charged: bool,
        failure: str | None,
        end: int | None,
    ) -> None:
        attributes: dict[str, Any] = {}
        if status is not None:
            attributes["http.response.status_code"] = status
        if outcome is not None:  # a success needs no more words than its status code
            attributes["nanobanana.request.outcome"] = outcome
            attributes["nanobanana.may_have_been_charged"] = charged
        if failure is not None:
            attributes["error.type"] = failure
            assert self._telemetry.api is not None
            span.set_status(self._telemetry.api.error)
        span.set_attributes(attributes)
        span.end(end_time=end)

    def _close(
        self, span: Any, token: Any, error: BaseException | None, started: float, ended: float
    ) -> bool:
        """End the attempt (sent at ``started``, ended at ``ended``: perf_counter) and its
        span, and count it; whether it may have been charged."""
        telemetry = self._telemetry
        if token is not None:
            assert telemetry.api is not None
            telemetry.api.context.detach(token)
        self._last_error = error
        self._last_ended = ended
        status = self._attempt_status
        outcome: str | None = None  # a failure's
        charged = False
        failure: str | None = None
        if error is not None:
            if status is None and isinstance(error, APIError):
                status = error.status_code  # an answer refused unread (a body over the size cap)
            outcome = outcome_of(error)
            charged = may_have_charged(error)
            if outcome != "cancelled":  # a cancellation is not the request's error
                failure = str(status) if status is not None and status >= 400 else outcome
        if span is not None:
            self._end_attempt_span(span, status, outcome, charged, failure, None)
        elif self._first_started:  # kept for the call's span, or for its own if it retries
            sent, self._first_started = self._first_started, 0
            cooldown, self._cooldown_wait = self._cooldown_wait, 0.0
            self._first = (sent, time.time_ns(), status, outcome, charged, failure, cooldown)
        totals = telemetry.totals
        if totals is not None:
            model = self._model
            requests = totals.requests
            request_key = (model, outcome or "success")
            requests[request_key] = requests.get(request_key, 0) + 1
            totals.reserved[model] -= self._credits
            if charged:
                totals.uncertain[model] = totals.uncertain.get(model, 0) + self._credits
            instruments = telemetry.instruments
            assert instruments is not None
            attributes = telemetry.http_metric.get((status, failure))
            if attributes is None:
                attributes = telemetry.http_metric_attributes(status, failure)
            # In the attempt's context: an exemplar names its span (or the call's).
            instruments.http_duration.record(ended - started, attributes, self._current)
        if charged:
            self._uncertain += self._credits
        return charged

    async def _after_response(
        self,
        hook: Callable[[ResponseEvent], Any],
        number: int,
        error: BaseException | None,
        elapsed: float,
        charged: bool,
    ) -> None:
        event = ResponseEvent(
            self._job,
            number,
            self._key,
            self._attempt_status,
            outcome_of(error),
            error,
            elapsed,
            charged,
            self._headers,
        )
        await call_hook("after_response", hook, event)

    # -- the end of the call -------------------------------------------------------------------

    def succeeded(self, generation: Generation) -> None:
        """The call generated ``generation`` (its ``elapsed`` is the call's duration)."""
        telemetry = self._telemetry
        model = self._model
        totals = telemetry.totals
        if totals is not None:
            totals.spent[model] = totals.spent.get(model, 0) + generation.credits
            totals.images[model] = totals.images.get(model, 0) + len(generation.urls)
            totals.active[model] -= 1
            assert telemetry.instruments is not None
            attributes = telemetry.call_metric.get((model, None))
            if attributes is None:
                attributes = telemetry.call_metric_attributes(model, None)
            telemetry.instruments.call_duration.record(
                generation.elapsed,
                attributes,
                self._context,  # made by the first attempt
            )
        if self._recording:
            ended: dict[str, Any] = {
                "nanobanana.attempts": self._attempts,
                "nanobanana.credits.spent": generation.credits,
            }
            if len(generation.urls) != generation.num:  # a partial (or generous) answer
                ended["nanobanana.images"] = len(generation.urls)
            self._end_span(ended)

    def failed(self, error: BaseException) -> None:
        """The call ended with ``error`` (retries exhausted, not retryable, or cancelled)."""
        telemetry = self._telemetry
        failure = error_type(error)
        totals = telemetry.totals
        if totals is not None:
            totals.active[self._model] -= 1
            assert telemetry.instruments is not None
            telemetry.instruments.call_duration.record(
                time.perf_counter() - self._started,
                telemetry.call_metric_attributes(self._model, failure),
                self._call_context(),
            )
        if self._recording:
            ended: dict[str, Any] = {"nanobanana.attempts": self._attempts}
            # Not an error: a cancellation, or a batch that held the call back before it sent
            # anything (stopped, out of budget: the job is reported skipped).
            held_back = self._attempts == 0 and not isinstance(error, NanoBananaError)
            if failure != "cancelled" and not held_back:
                ended["error.type"] = failure
                assert telemetry.api is not None
                self._span.set_status(telemetry.api.error, str(error))
            self._end_span(ended)

    def _end_span(self, attributes: dict[str, Any]) -> None:
        first = self._first
        if first is not None:  # its only attempt: the call's span tells how it went
            self._first = None
            status, outcome, charged = first[2], first[3], first[4]
            if status is not None:
                attributes["http.response.status_code"] = status
            if outcome is not None:
                attributes["nanobanana.request.outcome"] = outcome
                attributes["nanobanana.may_have_been_charged"] = charged
        if self._uncertain:
            attributes["nanobanana.credits.may_have_been_spent"] = self._uncertain
        if self._cooldown_total:
            attributes["nanobanana.cooldown.time"] = self._cooldown_total
        span = self._span
        span.set_attributes(attributes)
        span.end()
