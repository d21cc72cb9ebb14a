"""The telemetry sink: one per client, serving OpenTelemetry and the hooks from the same events.

The client tells :class:`Telemetry` what happens (a call starts, a batch runs, a job
finishes; a call's own events go to its :class:`~.call.CallTelemetry`) and the sink turns
each event into spans, metric sums and hook calls, whichever of them are configured. With
none configured, :meth:`Telemetry.start_call` returns ``None`` and the client runs exactly
the code it runs without telemetry.

What is the same for every call of a client (the server's attributes, the metric attribute
sets per status and error) is built once, here, and shared by its calls.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from ..models import Job
from .batch import BatchShape, BatchTelemetry
from .call import CallTelemetry
from .events import Hooks, call_hook
from .otel import Api, Instruments, Totals, load_api, resolve_meter, resolve_tracer

__all__ = ["BatchTelemetry", "CallTelemetry", "Telemetry"]


# What the sink reads of the batch package's results (it sits below it: no import of them).
class FinishedJob(Protocol):
    @property
    def status(self) -> str: ...


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
        #: The hook a batch calls with each job's result, if any.
        self.on_job_result = None if hooks is None else hooks.on_job_result
        self.api: Api | None = None
        self.tracer: Any | None = None
        self.instruments: Instruments | None = None
        self.totals: Totals | None = None
        #: Attempt spans' name and their attributes known before the request.
        self.span_name = ""
        self.span_attributes: dict[str, Any] = {}
        #: Attribute sets of the two histograms, one per (status, error.type) and per
        #: (model, error.type), built once: read them with ``.get``, else call
        #: :meth:`http_metric_attributes` / :meth:`call_metric_attributes`.
        self.http_metric: dict[tuple[int | None, str | None], dict[str, Any]] = {}
        self.call_metric: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer_pending = True
        self._meter_pending = True
        self._pending = True  # either of the two
        self._listening = hooks is not None  # anything to report to
        self._url = url
        self._http_base: dict[str, Any] = {}
        # The last context suppressed(), and what it gave: a batch's calls share one.
        self._suppressed: tuple[object, object] = (None, None)
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
        if self._pending:
            self._resolve()
        return self._listening

    def _resolve(self) -> None:
        api = self.api or load_api(force=False)
        if api is None:
            return
        if self.api is None:
            self.api = api
            attributes = _server_attributes(self._url)
            self.span_name = f"POST {self._url.path}"
            self.span_attributes = attributes
            self._http_base = {
                key: attributes[key]
                for key in ("http.request.method", "server.address", "server.port")
            }
        if self._tracer_pending and (
            self._tracer_provider is not None or api.global_tracer_provider_set()
        ):
            self.tracer = resolve_tracer(api, self._tracer_provider)
            self._tracer_pending = self.tracer is None
        if self._meter_pending and (
            self._meter_provider is not None or api.global_meter_provider_set()
        ):
            self.instruments = resolve_meter(api, self._meter_provider)
            if self.instruments is not None:
                self.totals = self.instruments.totals
                self._meter_pending = False
        self._pending = self._tracer_pending or self._meter_pending
        self._listening = (
            self.tracer is not None or self.totals is not None or self.hooks is not None
        )

    # -- calls ---------------------------------------------------------------------------------

    def start_call(
        self, job: Job, credits: int, idempotency_key: str, started: float
    ) -> CallTelemetry | None:
        """A :class:`CallTelemetry` for one generate call that may cost ``credits`` and began
        at ``started`` (``time.perf_counter()``), or None when nothing listens."""
        if self._pending:
            self._resolve()
        if not self._listening:
            return None
        return CallTelemetry(self, job, credits, idempotency_key, started)

    def suppressed(self, context: Any) -> Any:
        """``context`` marked for HTTP instrumentations to stand aside (see ``Api``)."""
        last, marked = self._suppressed
        if last is context:  # contexts are immutable
            return marked
        api = self.api
        assert api is not None
        marked = context
        if api.suppress_key is not None:
            marked = api.context.set_value(api.suppress_key, True, context)
        self._suppressed = (context, marked)
        return marked

    def http_metric_attributes(self, status: int | None, error: str | None) -> dict[str, Any]:
        key = (status, error)
        found = self.http_metric.get(key)
        if found is None:
            found = dict(self._http_base)
            if status is not None:
                found["http.response.status_code"] = status
            if error is not None:
                found["error.type"] = error
            self.http_metric[key] = found
        return found

    def call_metric_attributes(self, model: str, error: str | None) -> dict[str, Any]:
        key = (model, error)
        found = self.call_metric.get(key)
        if found is None:
            found = {"nanobanana.model": model}
            if error is not None:
                found["error.type"] = error
            self.call_metric[key] = found
        return found

    # -- batches -------------------------------------------------------------------------------

    def start_batch(self, options: BatchShape) -> BatchTelemetry | None:
        """Start the span of a batch and make it current (in the batch's background task)."""
        if not self.active or self.tracer is None or self.api is None:
            return None
        return BatchTelemetry(self.api, self.tracer, options)

    def job_result(self, result: FinishedJob) -> None:
        """A job of a batch finished: counted (and to be told to :attr:`on_job_result`)."""
        totals = self.totals
        if totals is not None:
            jobs = totals.jobs
            jobs[result.status] = jobs.get(result.status, 0) + 1

    async def job_result_hook(self, result: FinishedJob) -> None:
        """Call the ``on_job_result`` hook (when :attr:`on_job_result` is not None)."""
        if self.on_job_result is not None:
            await call_hook("on_job_result", self.on_job_result, result)
