"""OpenTelemetry through ``opentelemetry-api`` only (extra ``otel``), imported lazily.

This is the one module of the SDK that imports ``opentelemetry``, and only inside functions:
importing ``nanobanana_async`` never loads it. A client uses OpenTelemetry when it is given a
``tracer_provider`` / ``meter_provider``, or once the application has configured global ones
(until then, spans and metrics cost nothing: ``opentelemetry`` is not even imported by the SDK
unless the application imported it first).

Tracers and meters are taken per client from the provider itself, never through the API's
proxies (a module-level proxy stays bound to the first provider it sees). Counters are kept
as plain sums and reported through observable instruments at collection time: a synchronous
``Counter.add`` costs about as much as a span attribute on every call, a dictionary update
almost nothing. Only the two latency histograms are recorded per call.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Final

from .._version import __version__

__all__ = [
    "CALL_DURATION_BUCKETS",
    "HTTP_DURATION_BUCKETS",
    "SCHEMA_URL",
    "SCOPE",
    "Api",
    "Instruments",
    "Totals",
    "load_api",
    "resolve_meter",
    "resolve_tracer",
]

SCOPE: Final = "nanobanana_async"
#: The semantic conventions the HTTP client spans and metric follow.
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.44.0"
#: The buckets the HTTP semantic conventions advise for ``http.client.request.duration``.
HTTP_DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: A generate call takes seconds to minutes, retries and cool-downs included.
CALL_DURATION_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0,
)  # fmt: skip


class Api:
    """The parts of the OpenTelemetry API the SDK uses, imported once."""

    def __init__(self) -> None:
        from opentelemetry import context, metrics, propagate, trace

        self.trace = trace
        self.context = context
        self.propagate = propagate
        self.metrics = metrics
        self.client_kind = trace.SpanKind.CLIENT
        self.error = trace.StatusCode.ERROR
        self.set_span_in_context = trace.set_span_in_context
        # Private, but the key every HTTP auto-instrumentation (httpx, aiohttp, requests)
        # checks: set while the SDK's own CLIENT span is current, they add no second span and
        # leave our traceparent alone.
        self.suppress_key: str | None = getattr(context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)
        proxy_meter = getattr(getattr(metrics, "_internal", None), "_ProxyMeterProvider", None)
        self._unset_meter: tuple[type, ...] = (metrics.NoOpMeterProvider,) + (
            (proxy_meter,) if isinstance(proxy_meter, type) else ()
        )
        self._unset_tracer: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

        # The global provider last found unset: a client given one provider asks for the other
        # on every call, and isinstance against the API's abstract classes is slow.
        self._unset_seen: tuple[object, object] = (None, None)
        # Until the application sets a global provider, a client asks on every call whether it
        # has; the API's getters look the environment up each time. The API keeps what was
        # set in a module global: read that (private, hence only when it is there, and not
        # when the environment names a provider, which the getter loads on first use).
        self._trace_globals = _globals_of(trace, "_TRACER_PROVIDER", "OTEL_PYTHON_TRACER_PROVIDER")
        self._meter_globals = _globals_of(
            getattr(metrics, "_internal", None), "_METER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER"
        )

    def global_tracer_provider_set(self) -> bool:
        """Whether the application has set a global tracer provider (cheap: every call)."""
        found = self._trace_globals
        if found is not None:
            return found.get("_TRACER_PROVIDER") is not None
        return self.tracer_provider_set(self.trace.get_tracer_provider())

    def global_meter_provider_set(self) -> bool:
        """Whether the application has set a global meter provider (cheap: every call)."""
        found = self._meter_globals
        if found is not None:
            return found.get("_METER_PROVIDER") is not None
        return self.meter_provider_set(self.metrics.get_meter_provider())

    def tracer_provider_set(self, provider: object) -> bool:
        if provider is self._unset_seen[0]:
            return False
        if isinstance(provider, self._unset_tracer):
            self._unset_seen = (provider, self._unset_seen[1])
            return False
        return True

    def meter_provider_set(self, provider: object) -> bool:
        if provider is self._unset_seen[1]:
            return False
        if isinstance(provider, self._unset_meter):
            self._unset_seen = (self._unset_seen[0], provider)
            return False
        return True


def _globals_of(module: object, name: str, variable: str) -> dict[str, Any] | None:
    """``module``'s globals, when it keeps the provider set under ``name`` and the environment
    does not name one (``variable``); else None (ask the API's getter)."""
    found: dict[str, Any] | None = getattr(module, "__dict__", None)
    if found is None or name not in found or variable in os.environ:
        return None
    return found


_api: Api | None = None
_api_failed = False


def load_api(*, force: bool) -> Api | None:
    """The API, or None when it is not installed (tried once) or, unless ``force``, not yet
    imported by the application (then nobody can have configured it)."""
    global _api, _api_failed
    if _api is not None:
        return _api
    if _api_failed:
        return None
    if not force:
        modules = sys.modules
        if "opentelemetry.trace" not in modules and "opentelemetry.metrics" not in modules:
            return None
    try:
        # ``opentelemetry`` is a namespace package: only importing the API proves it is there.
        _api = Api()
    except ImportError:
        _api_failed = True
        return None
    return _api


def resolve_tracer(api: Api, provider: Any | None) -> Any | None:
    """A tracer from ``provider``, else from the global provider once one is set, else None."""
    if provider is None:
        provider = api.trace.get_tracer_provider()
        if not api.tracer_provider_set(provider):
            return None
    return provider.get_tracer(SCOPE, __version__, schema_url=SCHEMA_URL)


def resolve_meter(api: Api, provider: Any | None) -> Instruments | None:
    """The SDK's instruments on ``provider`` (else the global one once set), else None."""
    if provider is None:
        provider = api.metrics.get_meter_provider()
        if not api.meter_provider_set(provider):
            return None
    return Instruments.for_provider(api, provider)


class Totals:
    """Running sums behind the observable instruments, shared by the clients of one provider.

    Keys are attribute values (a model; a model and an outcome). Updated on the event loop,
    read by the metric reader (maybe in its own thread): readers copy before iterating.
    """

    __slots__ = (
        "active",
        "cooldown",
        "images",
        "jobs",
        "requests",
        "reserved",
        "retries",
        "spent",
        "uncertain",
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.images: dict[str, int] = {}
        self.spent: dict[str, int] = {}
        self.uncertain: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.jobs: dict[str, int] = {}
        self.cooldown = [0.0]


def _by_model(api: Api, values: dict[str, int]) -> Iterator[Any]:
    observation = api.metrics.Observation
    for model, value in list(values.items()):
        yield observation(value, {"nanobanana.model": model})


def _by_model_and(api: Api, values: dict[tuple[str, str], int], name: str) -> Iterator[Any]:
    observation = api.metrics.Observation
    for (model, other), value in list(values.items()):
        yield observation(value, {"nanobanana.model": model, name: other})


class Instruments:
    """The instruments of one meter provider: two histograms, and observable sums over
    :class:`Totals`. One per provider, shared by its clients (an observable instrument
    registered twice under one name would keep only the first callback)."""

    _by_provider: ClassVar[weakref.WeakKeyDictionary[Any, Instruments]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def for_provider(cls, api: Api, provider: Any) -> Instruments:
        try:
            found = cls._by_provider.get(provider)
        except TypeError:  # not weakly referenceable: one set per client, still correct
            return cls(api, provider)
        if found is None:
            found = cls._by_provider[provider] = cls(api, provider)
        return found

    def __init__(self, api: Api, provider: Any) -> None:
        meter = provider.get_meter(SCOPE, __version__, schema_url=SCHEMA_URL)
        self.totals = totals = Totals()
        self.call_duration = _histogram(
            meter,
            "nanobanana.client.operation.duration",
            "Duration of generate calls, retries and cool-downs included.",
            CALL_DURATION_BUCKETS,
        )
        self.http_duration = _histogram(
            meter,
            "http.client.request.duration",
            "Duration of HTTP client requests.",
            HTTP_DURATION_BUCKETS,
        )

        def counter(name: str, unit: str, description: str, observe: Any) -> None:
            meter.create_observable_counter(
                name, callbacks=[lambda _options: observe()], unit=unit, description=description
            )

        def up_down(name: str, unit: str, description: str, observe: Any) -> None:
            meter.create_observable_up_down_counter(
                name, callbacks=[lambda _options: observe()], unit=unit, description=description
            )

        counter(
            "nanobanana.client.requests",
            "{request}",
            "Generate requests (attempts) by outcome.",
            lambda: _by_model_and(api, totals.requests, "nanobanana.request.outcome"),
        )
        counter(
            "nanobanana.client.retries",
            "{retry}",
            "Retries made, by the outcome of the attempt they repeat.",
            lambda: _by_model_and(api, totals.retries, "nanobanana.retry.reason"),
        )
        counter(
            "nanobanana.client.images",
            "{image}",
            "Images generated.",
            lambda: _by_model(api, totals.images),
        )
        counter(
            "nanobanana.client.credits.spent",
            "{credit}",
            "Credits charged for the images generated (pricing table).",
            lambda: _by_model(api, totals.spent),
        )
        counter(
            "nanobanana.client.credits.may_have_been_spent",
            "{credit}",
            "Credits of attempts whose answer was lost after the request was sent.",
            lambda: _by_model(api, totals.uncertain),
        )
        up_down(
            "nanobanana.client.credits.reserved",
            "{credit}",
            "Credits at stake in the attempts in flight.",
            lambda: _by_model(api, totals.reserved),
        )
        up_down(
            "nanobanana.client.jobs.active",
            "{job}",
            "Generate calls in progress.",
            lambda: _by_model(api, totals.active),
        )
        counter(
            "nanobanana.client.cooldown.time",
            "s",
            "Time calls spent waiting for a 429 cool-down.",
            lambda: iter((api.metrics.Observation(totals.cooldown[0]),)),
        )
        counter(
            "nanobanana.batch.jobs",
            "{job}",
            "Jobs of batches finished, by status.",
            lambda: _by_status(api, totals.jobs),
        )


def _by_status(api: Api, values: dict[str, int]) -> Iterable[Any]:
    observation = api.metrics.Observation
    return [observation(value, {"nanobanana.job.status": s}) for s, value in list(values.items())]


def _histogram(meter: Any, name: str, description: str, buckets: tuple[float, ...]) -> Any:
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api before 1.23: no bucket advice
        return meter.create_histogram(name, unit="s", description=description)
