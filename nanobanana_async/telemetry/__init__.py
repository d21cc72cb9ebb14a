"""Telemetry: OpenTelemetry spans and metrics, and event hooks, from one sink per client.

OpenTelemetry goes through ``opentelemetry-api`` only (extra ``otel``) and is never imported
by ``import nanobanana_async``: a client uses it when given a ``tracer_provider`` /
``meter_provider`` or once the application has configured global ones. ``Hooks`` serve
callers without OpenTelemetry. Both see every request on every transport. See
``docs/observability.md`` for the span tree, the attributes and the metrics.
"""

from .batch import BatchTelemetry
from .call import CallTelemetry
from .events import AttemptEvent, Hooks, ResponseEvent, RetryEvent
from .outcomes import OUTCOMES, error_type, outcome_of
from .sink import Telemetry

__all__ = [
    "OUTCOMES",
    "AttemptEvent",
    "BatchTelemetry",
    "CallTelemetry",
    "Hooks",
    "ResponseEvent",
    "RetryEvent",
    "Telemetry",
    "error_type",
    "outcome_of",
]
