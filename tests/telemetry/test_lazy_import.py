"""OpenTelemetry costs nothing until the application uses it: never imported by the SDK.

Each check runs in a fresh interpreter (``-W error``), so ``sys.modules`` and the global
OpenTelemetry providers are its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCK_OPENTELEMETRY = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    # As if the extra were not installed: every opentelemetry module is missing.
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
"""

USE_THE_SDK = """
import anyio, sys
import nanobanana_async
from nanobanana_async import AsyncNanoBanana, Hooks
from nanobanana_async.emulator import Emulator

seen = []

async def main():
    emulator = Emulator()
    hooks = Hooks(after_response=lambda e: seen.append(e.outcome))
    async with AsyncNanoBanana("sk-test", transport=emulator.transport(), hooks=hooks) as c:
        await c.generate("a red fox")
        await c.run_batch(["an owl", "a heron"], concurrency=2)
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as c:
        await c.generate("a lynx")

for backend in ("asyncio", "trio"):
    anyio.run(main, backend=backend)
assert seen == ["success"] * 6, seen
loaded = sorted(m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry."))
assert loaded == [], loaded
"""


def run(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_without_the_extra_nothing_of_opentelemetry_is_imported() -> None:
    run(
        BLOCK_OPENTELEMETRY
        + USE_THE_SDK
        + """
try:
    AsyncNanoBanana("sk-test", tracer_provider=object())
except ImportError as exc:
    assert "nanobanana-async[otel]" in str(exc), exc
else:
    raise AssertionError("a tracer_provider without OpenTelemetry was accepted")
"""
    )


def test_installed_but_unused_opentelemetry_is_not_imported() -> None:
    pytest.importorskip("opentelemetry.trace")
    run(USE_THE_SDK)


def test_global_providers_set_after_the_client_is_made_are_used() -> None:
    pytest.importorskip("opentelemetry.sdk")
    run(
        """
        import anyio
        from nanobanana_async import AsyncNanoBanana
        from nanobanana_async.emulator import Emulator

        async def main() -> None:
            emulator = Emulator()
            async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
                await client.generate("before")  # nothing configured yet: no telemetry
                from opentelemetry import metrics, trace
                from opentelemetry.sdk.metrics import MeterProvider
                from opentelemetry.sdk.metrics.export import InMemoryMetricReader
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import SimpleSpanProcessor
                from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                    InMemorySpanExporter,
                )

                exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(exporter))
                trace.set_tracer_provider(provider)
                metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
                await client.generate("after")
            names = [s.name for s in exporter.get_finished_spans()]
            assert names == ["nanobanana generate"], names  # one attempt: one span
            data = reader.get_metrics_data()
            requests = [
                p.value
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.name == "nanobanana.client.requests"
                for p in m.data.data_points
            ]
            assert requests == [1], requests

        anyio.run(main)
        """
    )


def test_global_providers_named_by_the_environment_are_used() -> None:
    """OTEL_PYTHON_TRACER_PROVIDER / OTEL_PYTHON_METER_PROVIDER name the global providers,
    which the API loads when first asked for them: the client asks, and uses them."""
    pytest.importorskip("opentelemetry.sdk")
    run(
        """
        import os

        os.environ["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
        os.environ["OTEL_PYTHON_METER_PROVIDER"] = "sdk_meter_provider"

        import anyio
        from opentelemetry.sdk.metrics._internal.instrument import _Histogram
        from opentelemetry.sdk.trace import Tracer

        from nanobanana_async import AsyncNanoBanana
        from nanobanana_async.emulator import Emulator

        # What the providers loaded from the environment were asked to do (they have no
        # exporter or reader to read back from).
        started, recorded = [], []
        start_span, record = Tracer.start_span, _Histogram.record

        def spy_start(self, name, *args, **kwargs):
            started.append(name)
            return start_span(self, name, *args, **kwargs)

        def spy_record(self, amount, *args, **kwargs):
            recorded.append(self.name)
            return record(self, amount, *args, **kwargs)

        Tracer.start_span, _Histogram.record = spy_start, spy_record

        async def main() -> None:
            async with AsyncNanoBanana("sk-test", transport=Emulator().transport()) as client:
                await client.generate("a red fox")

        anyio.run(main)
        assert started == ["nanobanana generate"], started
        assert sorted(recorded) == [
            "http.client.request.duration",
            "nanobanana.client.operation.duration",
        ], recorded
        """
    )
