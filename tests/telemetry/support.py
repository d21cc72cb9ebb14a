"""The real OpenTelemetry SDK with in-memory exporters, and an emulator that records headers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from nanobanana_async import RetryPolicy
from nanobanana_async.emulator import Emulator
from nanobanana_async.emulator.asgi import Receive, Scope, Send

KEY = "sk-otel-SECRET-5e8d1c3b7a9f2e4d6c0b"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
GENERATE = "nanobanana generate"
ATTEMPT = "POST /v1/images/generate"
BATCH = "nanobanana batch"


@attrs.define
class Otel:
    """A tracer provider and a meter provider of the SDK, read in memory (never the globals)."""

    exporter: InMemorySpanExporter = attrs.Factory(InMemorySpanExporter)
    reader: InMemoryMetricReader = attrs.Factory(InMemoryMetricReader)
    tracer_provider: TracerProvider = attrs.field(init=False)
    meter_provider: MeterProvider = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        """Keyword arguments for AsyncNanoBanana."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return sorted(
            (s for s in found if name is None or s.name == name),
            key=lambda s: (s.start_time or 0, s.name),
        )

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """Data points of metric ``name``: (attributes, value) for sums, (attributes, count)
        for histograms."""
        out: list[tuple[dict[str, Any], Any]] = []
        data = self.reader.get_metrics_data()
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        if isinstance(point, HistogramDataPoint):
                            value: Any = point.count
                        else:
                            assert isinstance(point, NumberDataPoint)
                            value = point.value
                        out.append((dict(point.attributes or {}), value))
        return out

    def total(self, name: str, where: Mapping[str, Any] | None = None) -> Any:
        """Sum of metric ``name`` over the points whose attributes include ``where``."""
        wanted = dict(where or {})
        return sum(
            value
            for attributes, value in self.points(name)
            if all(attributes.get(k) == v for k, v in wanted.items())
        )

    def by(self, name: str, attribute: str) -> dict[Any, Any]:
        """Metric ``name`` summed per value of ``attribute`` (zero sums left out)."""
        out: dict[Any, Any] = {}
        for attributes, value in self.points(name):
            key = attributes.get(attribute)
            out[key] = out.get(key, 0) + value
        return {k: v for k, v in out.items() if v}

    def everything(self) -> Iterator[str]:
        """Every string OpenTelemetry was handed: span names, attributes, events, statuses,
        links, resources, metric names and data point attributes."""
        for span in self.exporter.get_finished_spans():
            yield span.name
            yield repr(span.status.description)
            yield from _strings(dict(span.attributes or {}))
            yield from _strings(dict(span.resource.attributes))
            for event in span.events:
                yield event.name
                yield from _strings(dict(event.attributes or {}))
            for link in span.links:
                yield from _strings(dict(link.attributes or {}))
            yield span.to_json()
        data = self.reader.get_metrics_data()
        if data is not None:
            yield data.to_json()


def _strings(attributes: dict[str, Any]) -> Iterator[str]:
    for key, value in attributes.items():
        yield key
        yield repr(value)


def traceparent(span: ReadableSpan) -> str:
    """The ``traceparent`` header that names ``span``."""
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def render_tree(spans: Sequence[ReadableSpan], attributes: Sequence[str] = ()) -> str:
    """The spans as an indented tree: name, kind, status, then the chosen attributes."""
    ids = {span_id(s) for s in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = parent_id(span)
        children.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        kind = "CLIENT" if span.kind == SpanKind.CLIENT else span.kind.name
        status = "ERROR" if span.status.status_code == StatusCode.ERROR else "ok"
        shown = dict(span.attributes or {})
        details = " ".join(f"{k}={shown[k]}" for k in attributes if k in shown)
        lines.append(f"{'  ' * depth}{span.name} [{kind}, {status}] {details}".rstrip())
        for child in children.get(span_id(span), []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return "\n".join(lines)


class RecordingEmulator(Emulator):
    """The emulator, noting the ``traceparent`` and ``baggage`` of every generate request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.traceparents: list[str | None] = []
        self.baggage: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/v1/images/generate"):
            headers = dict(scope["headers"])
            for name, seen in ((b"traceparent", self.traceparents), (b"baggage", self.baggage)):
                value = headers.get(name)
                seen.append(value.decode("latin-1") if value is not None else None)
        await super().__call__(scope, receive, send)
