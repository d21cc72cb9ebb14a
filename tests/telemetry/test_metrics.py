"""Metrics from the real OpenTelemetry SDK (in-memory reader) against what they measure:
a batch's metrics equal its BatchReport, the credit metrics equal the emulator's ledger."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nanobanana_async import AsyncNanoBanana, Hooks, Job, RetryEvent
from nanobanana_async.emulator import Emulator, Faults, serve

from .scripts import SERVER_ERROR, scripted
from .support import ATTEMPT, FAST, GENERATE, KEY, Otel, span_id

pytestmark = pytest.mark.anyio

MODEL = "gemini-2.5-flash-image"
FAULTS = Faults(
    server_error_rate=0.15,
    rate_limit_rate=0.1,
    retry_after=0.01,
    drop_rate=0.1,
    drop_after_charge_share=0.5,
)


@contextlib.asynccontextmanager
async def client_for(
    emulator: Emulator, where: str, otel: Otel, **options: Any
) -> AsyncIterator[AsyncNanoBanana]:
    options = {"retry_policy": FAST, **otel.providers, **options}
    if where == "in-process":
        async with AsyncNanoBanana(KEY, transport=emulator.transport(), **options) as client:
            yield client
        return
    with serve(emulator, "127.0.0.1", 0) as server:
        async with AsyncNanoBanana(KEY, base_url=server.base_url, **options) as client:
            yield client


async def test_a_batch_s_metrics_equal_its_report(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=FAULTS, seed=7)
    reasons: dict[str, int] = {}

    def on_retry(event: RetryEvent) -> None:
        reasons[event.reason] = reasons.get(event.reason, 0) + 1

    jobs = [Job(f"prompt {i}", MODEL, num=1 + i % 2) for i in range(40)]
    async with AsyncNanoBanana(
        KEY,
        transport=emulator.transport(),
        retry_policy=FAST,
        max_retries=3,
        hooks=Hooks(on_retry=on_retry),
        **otel.providers,
    ) as client:
        report = await client.run_batch(jobs, concurrency=4, max_credits=90)

    statuses = otel.by("nanobanana.batch.jobs", "nanobanana.job.status")
    assert statuses == {
        k: v
        for k, v in {
            "succeeded": report.succeeded,
            "failed": report.failed,
            "skipped": report.skipped,
        }.items()
        if v
    }
    assert report.failed
    assert report.skipped
    assert report.retries
    assert otel.total("nanobanana.client.retries") == report.retries
    assert otel.by("nanobanana.client.retries", "nanobanana.retry.reason") == reasons
    sent = sum(r.attempts for r in report.results)
    assert otel.total("nanobanana.client.requests") == sent == emulator.stats.generate_requests
    assert otel.total("http.client.request.duration") == sent  # one measurement per request
    calls = sum(1 for r in report.results if r.attempts)
    assert otel.total("nanobanana.client.operation.duration") == calls
    assert otel.total("nanobanana.client.credits.spent") == report.credits_spent
    assert (
        otel.total("nanobanana.client.credits.may_have_been_spent")
        == report.credits_may_have_been_spent
    )
    images = sum(len(r.generation.urls) for r in report.results if r.generation)
    assert otel.total("nanobanana.client.images") == images
    assert otel.total("nanobanana.client.credits.reserved") == 0
    assert otel.total("nanobanana.client.jobs.active") == 0
    # The model is on every per-call metric.
    assert {a["nanobanana.model"] for a, _ in otel.points("nanobanana.client.requests")} == {MODEL}


@pytest.mark.parametrize("where", ["in-process", "loopback"])
async def test_credit_metrics_equal_the_emulator_s_ledger(where: str, otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 10_000}, faults=FAULTS, seed=11)
    async with client_for(emulator, where, otel, max_retries=4) as client:
        report = await client.run_batch([f"prompt {i}" for i in range(30)], concurrency=5)
    spent = otel.total("nanobanana.client.credits.spent")
    uncertain = otel.total("nanobanana.client.credits.may_have_been_spent")
    charged = 10_000 - emulator.balance(KEY)
    assert charged == emulator.stats.credits_charged
    price = 2
    lost_after_charge = emulator.stats.faults["dropped_after_charge"]
    lost_before_charge = emulator.stats.faults["dropped_before_charge"]
    assert lost_after_charge
    assert lost_before_charge
    # What was charged is what the SDK counted as spent, plus the answers lost after the
    # charge; the SDK's "may have been spent" covers every lost answer, charged or not.
    assert charged == spent + lost_after_charge * price
    assert uncertain == (lost_after_charge + lost_before_charge) * price
    assert spent == report.credits_spent


async def test_clients_on_one_meter_provider_add_up(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 100})
    for _ in range(2):
        async with AsyncNanoBanana(
            KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
        ) as client:
            await client.generate("a red fox")
    assert otel.total("nanobanana.client.requests") == 2
    assert otel.total("nanobanana.client.credits.spent") == 4 == emulator.stats.credits_charged


def exemplar_spans(otel: Otel) -> dict[tuple[str, Any], list[int | None]]:
    """The span ids of the two duration histograms' exemplars, by histogram and status code
    or model. One collection: the SDK hands an exemplar to one collection only."""
    keys = {
        "http.client.request.duration": "http.response.status_code",
        "nanobanana.client.operation.duration": "nanobanana.model",
    }
    out: dict[tuple[str, Any], list[int | None]] = {}
    data = otel.reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name in keys:
                    for point in metric.data.data_points:
                        value = dict(point.attributes or {}).get(keys[metric.name])
                        out[metric.name, value] = [e.span_id for e in point.exemplars]
    return out


async def test_duration_exemplars_name_the_spans_of_what_they_measure(otel: Otel) -> None:
    """In a sampled trace, a retry's duration has the retry's span as exemplar; a first
    attempt's, the call's span (which stood for it when it ended: its own span is made when
    the call retries); the call's duration, the call's span. Never the caller's span."""
    emulator = Emulator(keys={KEY: 100})
    app = otel.tracer_provider.get_tracer("app")
    async with AsyncNanoBanana(
        KEY,
        transport=emulator.transport(),
        retry_policy=FAST,
        hooks=scripted(emulator, {1: SERVER_ERROR}),
        **otel.providers,
    ) as client:
        with app.start_as_current_span("handle request"):
            await client.generate("a red fox", model=MODEL)
    (call,) = otel.spans(GENERATE)
    _first, second = otel.spans(ATTEMPT)
    assert exemplar_spans(otel) == {
        ("http.client.request.duration", 500): [span_id(call)],
        ("http.client.request.duration", 200): [span_id(second)],
        ("nanobanana.client.operation.duration", MODEL): [span_id(call)],
    }


async def test_a_single_attempt_s_exemplar_is_the_call_s_span(otel: Otel) -> None:
    async with AsyncNanoBanana(
        KEY, transport=Emulator().transport(), retry_policy=FAST, **otel.providers
    ) as client:
        await client.generate("a red fox", model=MODEL)
    (call,) = otel.spans(GENERATE)
    assert exemplar_spans(otel) == {
        ("http.client.request.duration", 200): [span_id(call)],
        ("nanobanana.client.operation.duration", MODEL): [span_id(call)],
    }
