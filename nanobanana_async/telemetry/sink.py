"""The telemetry sink: one per client, serving OpenTelemetry and the hooks from the same events.

The client tells :class:`Telemetry` what happens (a call starts, an attempt is sent, a
response comes back, a call ends, a batch runs, a job finishes) and the sink turns each event
into spans, metric sums and hook calls, whichever of them are configured. With none
configured, :meth:`Telemetry.start_call` returns ``None`` and the client runs exactly the code
it runs without telemetry.

Spans: a call that makes one attempt is one span, the call's, which carries that attempt's
status code (as HTTP client instrumentations do: no separate span for the only attempt). Only
when a call retries does each attempt get a span of its own under the call's: the first one's
is made then, with the times and outcome it had (its request carried the call span's
context as ``traceparent``), the next ones as they are sent.

Context: the generate span is never made current (attempt spans name it as their parent);
the context of the attempt (its span, or the call's for a first attempt) is current only while
its request is sent, on the task that sends it; the batch span is current inside the batch's
background task. No span is ever held current across a ``yield`` of an async generator.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import httpx

from ..errors import APIError, NanoBananaError, may_have_charged
from ..models import Generation, Job
from .batch import BatchShape, BatchTelemetry
from .events import AttemptEvent, Hooks, ResponseEvent, RetryEvent, call_hook
from .otel import Api, Instruments, Totals, load_api, resolve_meter, resolve_tracer
from .outcomes import error_type, outcome_of

__all__ = ["BatchTelemetry", "CallTelemetry", "Telemetry"]


# What the sink reads of the batch package's results (it sits below it: no import of them).
class FinishedJob(Protocol):
    @property
    def status(self) -> str: ...


T = TypeVar("T")

GENERATE_SPAN = "nanobanana generate"


def _server_attributes(url: httpx.URL) -> dict[str, Any]:
    # url.full without user info or query string: nothing secret can ride along.
    default_port = {"http": 80, "https": 443}.get(url.scheme, 0)
    port = url.port or default_port
    host = url.host
    netloc = f"[{host}]" if ":" in host else host
    if port != default_port:
        netloc += f":{port}"
    return {
        "http.request.method": "POST",
        "server.address": host,
        "server.port": port,
        "url.full": f"{url.scheme}://{netloc}{url.path}",
    }


class Telemetry:
    """What one client reports, and to whom: OpenTelemetry (when configured) and ``hooks``.

    ``tracer_provider`` / ``meter_provider`` default to the global providers, used from the
    moment the application sets them.
    """

    def __init__(
        self,
        url: httpx.URL,
        *,
        hooks: Hooks | None = None,
        tracer_provider: object | None = None,
        meter_provider: object | None = None,
    ) -> None:
        self.hooks = hooks
        self.api: Api | None = None
        self.tracer: Any | None = None
        self.instruments: Instruments | None = None
        self.totals: Totals | None = None
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer_pending = True
        self._meter_pending = True
        self._url = url
        self._span_name = ""
        self._span_attributes: dict[str, Any] = {}
        self._http_base: dict[str, Any] = {}
        self._http_metric: dict[tuple[int | None, str | None], dict[str, Any]] = {}
        self._call_metric: dict[tuple[str, str | None], dict[str, Any]] = {}
        if tracer_provider is not None or meter_provider is not None:
            if load_api(force=True) is None:
                raise ImportError(
                    "tracer_provider/meter_provider need OpenTelemetry: "
                    "pip install 'nanobanana-async[otel]'"
                )
            self._resolve()

    @property
    def active(self) -> bool:
        """Whether anything listens now (resolving the global providers if need be)."""
        if self._tracer_pending or self._meter_pending:
            self._resolve()
        return self.tracer is not None or self.totals is not None or self.hooks is not None

    def _resolve(self) -> None:
        api = self.api or load_api(force=False)
        if api is None:
            return
        if self.api is None:
            self.api = api
            attributes = _server_attributes(self._url)
            self._span_name = f"POST {self._url.path}"
            self._span_attributes = attributes
            self._http_base = {
                key: attributes[key]
                for key in ("http.request.method", "server.address", "server.port")
            }
        if self._tracer_pending:
            self.tracer = resolve_tracer(api, self._tracer_provider)
            self._tracer_pending = self.tracer is None
        if self._meter_pending:
            self.instruments = resolve_meter(api, self._meter_provider)
            if self.instruments is not None:
                self.totals = self.instruments.totals
                self._meter_pending = False

    # -- calls ---------------------------------------------------------------------------------

    def start_call(
        self, job: Job, prices: Mapping[str, int], idempotency_key: str
    ) -> CallTelemetry | None:
        """A :class:`CallTelemetry` for one generate call, or None when nothing listens."""
        if self._tracer_pending or self._meter_pending:
            self._resolve()
        if self.tracer is None and self.totals is None and self.hooks is None:
            return None
        return CallTelemetry(self, job, prices[job.model] * job.num, idempotency_key)

    def http_metric_attributes(self, status: int | None, error: str | None) -> dict[str, Any]:
        key = (status, error)
        found = self._http_metric.get(key)
        if found is None:
            found = dict(self._http_base)
            if status is not None:
                found["http.response.status_code"] = status
            if error is not None:
                found["error.type"] = error
            self._http_metric[key] = found
        return found

    def call_metric_attributes(self, model: str, error: str | None) -> dict[str, Any]:
        key = (model, error)
        found = self._call_metric.get(key)
        if found is None:
            found = {"nanobanana.model": model}
            if error is not None:
                found["error.type"] = error
            self._call_metric[key] = found
        return found

    # -- batches -------------------------------------------------------------------------------

    def start_batch(self, options: BatchShape) -> BatchTelemetry | None:
        """Start the span of a batch and make it current (in the batch's background task)."""
        if not self.active or self.tracer is None or self.api is None:
            return None
        return BatchTelemetry(self.api, self.tracer, options)

    @property
    def wants_job_results(self) -> bool:
        """Whether :meth:`job_result` has anything to do (metrics or a hook)."""
        return self.totals is not None or self.hooks is not None

    async def job_result(self, result: FinishedJob) -> None:
        """A job of a batch finished."""
        totals = self.totals
        if totals is not None:
            jobs = totals.jobs
            jobs[result.status] = jobs.get(result.status, 0) + 1
        hooks = self.hooks
        if hooks is not None and hooks.on_job_result is not None:
            await call_hook("on_job_result", hooks.on_job_result, result)


class CallTelemetry:
    """One generate call: its span, its attempts' spans, its sums and its hook events."""

    __slots__ = (
        "_attempt_status",
        "_attempts",
        "_cooldown_total",
        "_cooldown_wait",
        "_credits",
        "_first",
        "_headers",
        "_job",
        "_key",
        "_last_ended",
        "_last_error",
        "_model",
        "_span",
        "_started",
        "_telemetry",
        "_uncertain",
    )

    def __init__(self, telemetry: Telemetry, job: Job, credits: int, key: str) -> None:
        self._telemetry = telemetry
        self._job = job
        self._model = model = job.model
        self._credits = credits
        self._key = key
        self._attempts = 0
        self._last_error: BaseException | None = None
        self._last_ended = 0.0
        self._cooldown_wait = 0.0
        self._cooldown_total = 0.0
        self._uncertain = 0
        self._attempt_status: int | None = None
        self._headers: Mapping[str, str] | None = None
        self._span: Any = None
        # The first attempt, which has no span of its own unless the call retries: its start
        # and end (ns), the attributes its span would have ended with, and its failure.
        self._first: tuple[int, int, dict[str, Any], float] | None = None
        tracer = telemetry.tracer
        if tracer is not None:
            # Few attributes: each costs the SDK a few microseconds on every call.
            attributes: dict[str, Any] = {
                "nanobanana.model": model,
                "nanobanana.image_size": job.image_size,
                "nanobanana.num": job.num,
            }
            if job.id is not None:
                attributes["nanobanana.job.id"] = job.id
            self._span = tracer.start_span(GENERATE_SPAN, attributes=attributes)
        totals = telemetry.totals
        if totals is not None:
            active = totals.active
            active[model] = active.get(model, 0) + 1
        self._started = time.perf_counter()

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
        if telemetry.tracer is not None:
            span, token = self._open_span(number, reason, headers)
        if totals is not None:
            reserved = totals.reserved
            reserved[self._model] = reserved.get(self._model, 0) + self._credits
        started = time.perf_counter()
        try:
            result = await send()
        except BaseException as exc:
            elapsed = time.perf_counter() - started
            charged = self._close(span, token, exc, elapsed)
            after = None if hooks is None else hooks.after_response
            if after is not None and isinstance(exc, Exception):
                await self._after_response(after, number, exc, elapsed, charged)
            raise
        elapsed = time.perf_counter() - started
        self._close(span, token, None, elapsed)
        if hooks is not None and hooks.after_response is not None:
            await self._after_response(hooks.after_response, number, None, elapsed, False)
        return result

    def _open_span(self, number: int, reason: str | None, headers: dict[str, str]) -> Any:
        telemetry = self._telemetry
        api = telemetry.api
        assert api is not None
        assert telemetry.tracer is not None
        parent = api.set_span_in_context(self._span)
        span = None
        if not self._span.is_recording() or number == 1:
            # The call's trace was not sampled: its attempts' spans would not be either. Or
            # the first attempt: the call's span stands for it unless the call retries. The
            # call's context goes out as traceparent, no span is made.
            current = parent
            if number == 1 and self._span.is_recording():
                cooldown, self._cooldown_wait = self._cooldown_wait, 0.0
                self._first = (time.time_ns(), 0, {}, cooldown)
        else:
            if self._first is not None:
                self._first_attempt_span(parent)
            cooldown, self._cooldown_wait = self._cooldown_wait, 0.0
            span = self._start_attempt_span(number, reason, parent, cooldown, None)
            current = api.set_span_in_context(span, parent)
        if api.suppress_key is not None:
            current = api.context.set_value(api.suppress_key, True, current)
        api.propagate.inject(headers, context=current)
        return span, api.context.attach(current)

    def _start_attempt_span(
        self, number: int, reason: str | None, parent: Any, cooldown: float, start: int | None
    ) -> Any:
        telemetry = self._telemetry
        api = telemetry.api
        assert api is not None
        assert telemetry.tracer is not None
        attributes = dict(telemetry._span_attributes)
        attributes["nanobanana.attempt"] = number
        if reason is not None:
            attributes["http.request.resend_count"] = number - 1
            attributes["nanobanana.retry.reason"] = reason
        if cooldown:
            attributes["nanobanana.cooldown.wait"] = cooldown
        return telemetry.tracer.start_span(
            telemetry._span_name,
            context=parent,
            kind=api.client_kind,
            attributes=attributes,
            start_time=start,
        )

    def _first_attempt_span(self, parent: Any) -> None:
        """The call retries: its first attempt gets the span it would have had."""
        assert self._first is not None
        started, ended, attributes, cooldown = self._first
        self._first = None
        span = self._start_attempt_span(1, None, parent, cooldown, started)
        self._end_attempt_span(span, attributes, ended)

    def _end_attempt_span(self, span: Any, attributes: dict[str, Any], end: int | None) -> None:
        if "error.type" in attributes:
            assert self._telemetry.api is not None
            span.set_status(self._telemetry.api.error)
        span.set_attributes(attributes)
        span.end(end_time=end)

    def _close(self, span: Any, token: Any, error: BaseException | None, elapsed: float) -> bool:
        """End the attempt's span and count it; whether it may have been charged."""
        telemetry = self._telemetry
        if token is not None:
            assert telemetry.api is not None
            telemetry.api.context.detach(token)
        self._last_error = error
        self._last_ended = time.perf_counter()
        status = self._attempt_status
        if status is None and isinstance(error, APIError):
            status = error.status_code  # an answer refused unread (a body over the size cap)
        outcome = "success"
        charged = False
        failure: str | None = None
        if error is not None:
            outcome = outcome_of(error)
            charged = may_have_charged(error)
            if outcome != "cancelled":  # a cancellation is not the request's error
                failure = str(status) if status is not None and status >= 400 else outcome
        first = self._first
        if span is not None or first is not None:
            ended: dict[str, Any] = {}
            if status is not None:
                ended["http.response.status_code"] = status
            if error is not None:  # a success needs no more words than its status code
                ended["nanobanana.request.outcome"] = outcome
                ended["nanobanana.may_have_been_charged"] = charged
            if failure is not None:
                ended["error.type"] = failure
            if span is not None:
                self._end_attempt_span(span, ended, None)
            elif first is not None:  # kept for the call's span, or for its own if it retries
                self._first = (first[0], time.time_ns(), ended, first[3])
        totals = telemetry.totals
        if totals is not None:
            model = self._model
            requests = totals.requests
            request_key = (model, outcome)
            requests[request_key] = requests.get(request_key, 0) + 1
            totals.reserved[model] -= self._credits
            if charged:
                totals.uncertain[model] = totals.uncertain.get(model, 0) + self._credits
            instruments = telemetry.instruments
            assert instruments is not None
            instruments.http_duration.record(
                elapsed, telemetry.http_metric_attributes(status, failure)
            )
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
        """The call generated ``generation``."""
        telemetry = self._telemetry
        elapsed = time.perf_counter() - self._started
        model = self._model
        totals = telemetry.totals
        if totals is not None:
            totals.spent[model] = totals.spent.get(model, 0) + generation.credits
            totals.images[model] = totals.images.get(model, 0) + len(generation.urls)
            totals.active[model] -= 1
            assert telemetry.instruments is not None
            telemetry.instruments.call_duration.record(
                elapsed, telemetry.call_metric_attributes(model, None)
            )
        span = self._span
        if span is not None and span.is_recording():
            attributes: dict[str, Any] = {
                "nanobanana.attempts": self._attempts,
                "nanobanana.credits.spent": generation.credits,
            }
            if len(generation.urls) != generation.num:  # a partial (or generous) answer
                attributes["nanobanana.images"] = len(generation.urls)
            self._end_span(span, attributes)

    def failed(self, error: BaseException) -> None:
        """The call ended with ``error`` (retries exhausted, not retryable, or cancelled)."""
        telemetry = self._telemetry
        elapsed = time.perf_counter() - self._started
        failure = error_type(error)
        totals = telemetry.totals
        if totals is not None:
            totals.active[self._model] -= 1
            assert telemetry.instruments is not None
            telemetry.instruments.call_duration.record(
                elapsed, telemetry.call_metric_attributes(self._model, failure)
            )
        span = self._span
        if span is not None and span.is_recording():
            attributes: dict[str, Any] = {"nanobanana.attempts": self._attempts}
            # Not an error: a cancellation, or a batch that held the call back before it sent
            # anything (stopped, out of budget: the job is reported skipped).
            held_back = self._attempts == 0 and not isinstance(error, NanoBananaError)
            if failure != "cancelled" and not held_back:
                attributes["error.type"] = failure
                assert telemetry.api is not None
                span.set_status(telemetry.api.error, str(error))
            self._end_span(span, attributes)

    def _end_span(self, span: Any, attributes: dict[str, Any]) -> None:
        first = self._first
        if first is not None:  # its only attempt: the call's span tells how it went
            self._first = None
            ended = first[2]
            for key in (
                "http.response.status_code",
                "nanobanana.request.outcome",
                "nanobanana.may_have_been_charged",
            ):
                if key in ended:
                    attributes[key] = ended[key]
        if self._uncertain:
            attributes["nanobanana.credits.may_have_been_spent"] = self._uncertain
        if self._cooldown_total:
            attributes["nanobanana.cooldown.time"] = self._cooldown_total
        span.set_attributes(attributes)
        span.end()
