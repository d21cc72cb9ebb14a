"""Spans from the real OpenTelemetry SDK: the tree of a call, its attributes, batches, errors.

Every test reads the SDK's in-memory exporter; nothing of OpenTelemetry is mocked.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import anyio
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from nanobanana_async import (
    APIConnectionError,
    AsyncNanoBanana,
    Hooks,
    InsufficientCreditsError,
    Job,
    JobResult,
    RateLimitError,
    SqliteStore,
)
from nanobanana_async.emulator import Emulator, Faults

from .scripts import DROPPED_AFTER_CHARGE, RATE_LIMITED, SERVER_ERROR, scripted
from .support import (
    ATTEMPT,
    BATCH,
    FAST,
    GENERATE,
    KEY,
    Otel,
    RecordingEmulator,
    parent_id,
    render_tree,
    span_id,
    traceparent,
)

pytestmark = pytest.mark.anyio

MODEL = "gemini-3.1-flash-image-preview"
SHOWN = (
    "nanobanana.attempts",
    "nanobanana.attempt",
    "http.response.status_code",
    "error.type",
    "nanobanana.retry.reason",
)


async def test_span_tree_of_a_call_with_two_retries(otel: Otel) -> None:
    emulator = RecordingEmulator(keys={KEY: 100})
    hooks = scripted(emulator, {1: SERVER_ERROR, 2: RATE_LIMITED})
    app = otel.tracer_provider.get_tracer("app")
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, hooks=hooks, **otel.providers
    ) as client:
        with app.start_as_current_span("handle request"):
            generation = await client.generate("a red fox", model=MODEL, image_size="16:9", num=2)

    assert render_tree(otel.spans(), SHOWN) == "\n".join(
        [
            "handle request [INTERNAL, ok]",
            "  nanobanana generate [INTERNAL, ok] nanobanana.attempts=3",
            "    POST /v1/images/generate [CLIENT, ERROR] nanobanana.attempt=1 "
            "http.response.status_code=500 error.type=500",
            "    POST /v1/images/generate [CLIENT, ERROR] nanobanana.attempt=2 "
            "http.response.status_code=429 error.type=429 nanobanana.retry.reason=server_error",
            "    POST /v1/images/generate [CLIENT, ok] nanobanana.attempt=3 "
            "http.response.status_code=200 nanobanana.retry.reason=rate_limited",
        ]
    )
    (request,) = otel.spans("handle request")
    (call,) = otel.spans(GENERATE)
    attempts = otel.spans(ATTEMPT)
    assert parent_id(call) == span_id(request)
    assert [parent_id(a) for a in attempts] == [span_id(call)] * 3
    # The first request went out with the call's context (it had no span of its own yet: a
    # call that makes one attempt is one span), each retry with its own span's: a server's
    # spans join this trace.
    assert emulator.traceparents == [traceparent(call)] + [traceparent(a) for a in attempts[1:]]
    # The first attempt's span, made once the call retried, has the times it had.
    assert attempts[0].start_time is not None
    assert attempts[0].end_time is not None
    assert attempts[1].start_time is not None
    assert call.start_time is not None
    assert call.start_time <= attempts[0].start_time < attempts[0].end_time
    assert attempts[0].end_time <= attempts[1].start_time
    assert {a.context.trace_id for a in [call, *attempts] if a.context} == {
        request.context.trace_id if request.context else 0
    }

    assert call.kind == SpanKind.INTERNAL
    assert call.status.status_code == StatusCode.UNSET
    assert dict(call.attributes or {}) | {"nanobanana.cooldown.time": None} == {
        "nanobanana.model": MODEL,
        "nanobanana.image_size": "16:9",
        "nanobanana.num": 2,
        "nanobanana.attempts": 3,
        "nanobanana.credits.spent": generation.credits,
        "nanobanana.cooldown.time": None,  # present only when the attempts waited for one
    }
    assert generation.credits == 8

    first, second, third = (dict(a.attributes or {}) for a in attempts)
    server = {
        "http.request.method": "POST",
        "server.address": "api.nanobananaapi.dev",
        "server.port": 443,
        "url.full": "https://api.nanobananaapi.dev/v1/images/generate",
    }
    assert first == server | {
        "nanobanana.attempt": 1,
        "nanobanana.request.outcome": "server_error",
        "http.response.status_code": 500,
        "error.type": "500",
        "nanobanana.may_have_been_charged": False,
    }
    assert second == server | {
        "nanobanana.attempt": 2,
        "http.request.resend_count": 1,
        "nanobanana.retry.reason": "server_error",
        "nanobanana.request.outcome": "rate_limited",
        "http.response.status_code": 429,
        "error.type": "429",
        "nanobanana.may_have_been_charged": False,
    }
    third.pop("nanobanana.cooldown.wait", None)  # the 429's cool-down, if it was still on
    assert third == server | {
        "nanobanana.attempt": 3,
        "http.request.resend_count": 2,
        "nanobanana.retry.reason": "rate_limited",
        "http.response.status_code": 200,
    }
    assert [a.kind for a in attempts] == [SpanKind.CLIENT] * 3
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    # HTTP client spans record no exception events (the status code says it all).
    assert [a.events for a in [call, *attempts]] == [()] * 4
    for span in otel.spans():
        assert span.instrumentation_scope is not None
        if span.name != "handle request":
            assert span.instrumentation_scope.name == "nanobanana_async"
            assert (span.instrumentation_scope.schema_url or "").startswith(
                "https://opentelemetry.io/schemas/"
            )
    # Nothing of the SDK is left current once the call returns.
    assert not trace.get_current_span().get_span_context().is_valid


async def test_a_call_that_makes_one_attempt_is_one_span(otel: Otel) -> None:
    # As HTTP client instrumentations do: no span for an attempt that is the call's only one
    # (before, every call made two spans, its own and its attempt's). The call's span carries
    # the attempt's status code and went out as its traceparent.
    emulator = RecordingEmulator(keys={KEY: 100})
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        await client.generate("a red fox")
    (call,) = otel.spans()
    assert call.name == GENERATE
    assert call.kind == SpanKind.INTERNAL
    assert dict(call.attributes or {})["http.response.status_code"] == 200
    assert dict(call.attributes or {})["nanobanana.attempts"] == 1
    assert "nanobanana.request.outcome" not in dict(call.attributes or {})  # a success
    assert emulator.traceparents == [traceparent(call)]


async def test_a_failed_call_is_an_error_span(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 1}, errors_as_http_200=True)  # the API's HTTP 200 quirk
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        with pytest.raises(InsufficientCreditsError):
            await client.generate("a red fox")
    (call,) = otel.spans(GENERATE)
    assert otel.spans(ATTEMPT) == []  # one attempt: the call's span stands for it
    assert call.status.status_code == StatusCode.ERROR
    assert "insufficient credits" in (call.status.description or "")
    attributes = dict(call.attributes or {})
    assert attributes["error.type"] == "insufficient_credits"
    # HTTP 200 with an error body: the request failed although the status says otherwise.
    assert attributes["http.response.status_code"] == 200
    assert attributes["nanobanana.request.outcome"] == "insufficient_credits"
    assert attributes["nanobanana.may_have_been_charged"] is False


async def test_an_answer_lost_after_sending_may_have_been_charged(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 100})
    hooks = scripted(emulator, {1: DROPPED_AFTER_CHARGE})
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, hooks=hooks, **otel.providers
    ) as client:
        with pytest.raises(APIConnectionError):
            await client.generate("a red fox")  # ambiguous: not retried by default
    (call,) = otel.spans(GENERATE)
    assert otel.spans(ATTEMPT) == []
    attributes = dict(call.attributes or {})
    assert "http.response.status_code" not in attributes
    assert attributes["nanobanana.request.outcome"] == "connection_lost"
    assert attributes["nanobanana.may_have_been_charged"] is True
    assert attributes["nanobanana.credits.may_have_been_spent"] == 2
    assert emulator.stats.credits_charged == 2  # it was charged indeed


async def test_cool_down_waits_are_recorded(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(rate_limit_rate=1.0, retry_after=0.05))
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        with pytest.raises(RateLimitError):
            await client.generate("first", max_retries=0)  # sets the client's cool-down
        emulator.faults = Faults()
        await client.generate("second")  # waits for it before sending
    first, second = otel.spans(GENERATE)
    assert otel.spans(ATTEMPT) == []  # one attempt each: the calls' spans say it all
    assert "nanobanana.cooldown.time" not in dict(first.attributes or {})
    waited = dict(second.attributes or {})["nanobanana.cooldown.time"]
    assert isinstance(waited, float)
    assert waited > 0
    assert otel.total("nanobanana.client.cooldown.time") == waited


async def test_a_cancelled_call_ends_its_spans_without_error(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(latency=60))
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        with anyio.move_on_after(0.05):
            await client.generate("a red fox")
    (call,) = otel.spans(GENERATE)
    assert otel.spans(ATTEMPT) == []
    assert call.status.status_code == StatusCode.UNSET
    assert dict(call.attributes or {})["nanobanana.request.outcome"] == "cancelled"
    assert "error.type" not in dict(call.attributes or {})
    assert otel.total("nanobanana.client.jobs.active") == 0
    assert otel.total("nanobanana.client.credits.reserved") == 0
    assert not trace.get_current_span().get_span_context().is_valid


async def test_batch_span_with_its_totals_parents_the_calls(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 1000})
    app = otel.tracer_provider.get_tracer("app")
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        with app.start_as_current_span("nightly run"):
            report = await client.run_batch(
                [f"prompt {i}" for i in range(8)], concurrency=3, max_credits=12
            )
    (run,) = otel.spans("nightly run")
    (batch,) = otel.spans(BATCH)
    calls = otel.spans(GENERATE)
    assert parent_id(batch) == span_id(run)
    assert {parent_id(c) for c in calls} == {span_id(batch)}
    assert len(calls) == report.succeeded + report.failed  # skipped jobs send nothing
    assert {parent_id(a) for a in otel.spans(ATTEMPT)} <= {span_id(c) for c in calls}
    assert dict(batch.attributes or {}) == {
        "nanobanana.batch.concurrency": 3,
        "nanobanana.batch.ordered": False,
        "nanobanana.batch.max_credits": 12,
        "nanobanana.batch.jobs.succeeded": report.succeeded,
        "nanobanana.batch.jobs.failed": report.failed,
        "nanobanana.batch.jobs.skipped": report.skipped,
        "nanobanana.batch.jobs.resumed": report.resumed,
        "nanobanana.batch.credits.estimated": report.credits_estimated,
        "nanobanana.batch.credits.spent": report.credits_spent,
        "nanobanana.batch.credits.may_have_been_spent": report.credits_may_have_been_spent,
        "nanobanana.batch.retries": report.retries,
        "nanobanana.batch.completed": True,
    }
    # 6 jobs fit in the budget, 2 are skipped: the totals are not trivial.
    assert (report.succeeded, report.skipped, report.credits_spent) == (6, 2, 12)
    assert batch.status.status_code == StatusCode.UNSET


async def test_a_worker_run_has_its_batch_span_and_job_results(
    otel: Otel, tmp_path: pathlib.Path
) -> None:
    # worker() builds the same run as batch(): the client's telemetry goes with it.
    store = SqliteStore(tmp_path / "jobs.db")
    await store.add([Job(f"prompt {i}", id=f"job-{i}") for i in range(6)])
    finished: list[JobResult] = []

    async def record(result: JobResult) -> None:
        finished.append(result)

    emulator = Emulator(keys={KEY: 1000})
    hooks = Hooks(on_job_result=record)
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, hooks=hooks, **otel.providers
    ) as client:
        report = await client.run_worker(store, concurrency=2, max_credits=8)
    (batch,) = otel.spans(BATCH)
    calls = otel.spans(GENERATE)
    assert {parent_id(c) for c in calls} == {span_id(batch)}
    assert len(calls) == report.succeeded == 4
    attributes = dict(batch.attributes or {})
    assert attributes["nanobanana.batch.max_credits"] == 8
    assert attributes["nanobanana.batch.jobs.succeeded"] == 4
    assert attributes["nanobanana.batch.jobs.skipped"] == report.skipped
    assert sorted(r.id or "" for r in finished) == sorted(r.id or "" for r in report.results)


async def test_breaking_out_of_a_batch_ends_its_span(otel: Otel) -> None:
    emulator = Emulator(keys={KEY: 1000}, faults=Faults(latency=0.01))
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        async with client.batch([f"prompt {i}" for i in range(50)], concurrency=2) as run:
            async for _result in run:
                break
        # The consumer's context never held the batch span, not even while iterating.
        assert not trace.get_current_span().get_span_context().is_valid
    (batch,) = otel.spans(BATCH)
    assert dict(batch.attributes or {})["nanobanana.batch.completed"] is False
    assert batch.end_time is not None
    assert all(c.end_time is not None for c in otel.spans(GENERATE))


async def test_a_trace_not_sampled_still_sends_traceparent_and_records_nothing() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    otel = Otel()
    otel.tracer_provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    otel.tracer_provider.add_span_processor(SimpleSpanProcessor(otel.exporter))
    emulator = RecordingEmulator(keys={KEY: 100})
    hooks = scripted(emulator, {1: SERVER_ERROR})
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, hooks=hooks, **otel.providers
    ) as client:
        await client.generate("a red fox")
    otel.shutdown()
    assert otel.spans() == []
    # Both attempts carried the call's (unsampled) context, in one trace.
    assert len(emulator.traceparents) == 2
    flags = [int(t.rsplit("-", 1)[1], 16) for t in emulator.traceparents if t is not None]
    assert [f & 1 for f in flags] == [0, 0]  # "sampled" is off
    assert len({t.split("-")[1] for t in emulator.traceparents if t}) == 1


async def test_each_request_carries_the_context_of_its_own_caller(otel: Otel) -> None:
    """Calls of one client from different contexts (baggage, spans) send each their own; a
    batch's calls, sharing one, send the batch's."""
    emulator = RecordingEmulator(keys={KEY: 100})
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        for who in ("alice", "bob", "alice"):
            token = context.attach(baggage.set_baggage("user", who))
            try:
                await client.generate(f"a red fox for {who}")
            finally:
                context.detach(token)
        token = context.attach(baggage.set_baggage("user", "carol"))
        try:
            await client.run_batch(["an owl", "a heron", "a lynx"], concurrency=2)
        finally:
            context.detach(token)
    assert emulator.baggage == ["user=alice", "user=bob", "user=alice"] + ["user=carol"] * 3
    calls = otel.spans(GENERATE)
    assert sorted(t or "" for t in emulator.traceparents) == sorted(traceparent(c) for c in calls)
    (batch,) = otel.spans(BATCH)
    assert [parent_id(c) for c in calls] == [None] * 3 + [span_id(batch)] * 3


class SpyTracerProvider:
    """The SDK's provider dropping every trace; the client's spans note what it asks of them."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

        self.provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
        self.started: list[tuple[str, dict[str, Any]]] = []
        self.asked: collections.Counter[str] = collections.Counter()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        tracer = self.provider.get_tracer(*args, **kwargs)
        spy = self

        class Tracer:
            def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
                span = tracer.start_span(name, *args, **kwargs)
                assert not span.is_recording()
                spy.started.append((name, dict(kwargs.get("attributes") or {})))
                return SpySpan(span.get_span_context(), spy.asked)

        return Tracer()


class SpySpan(trace.NonRecordingSpan):
    """What the SDK returns for a trace it drops, counting what is asked of it."""

    def __init__(self, context: trace.SpanContext, asked: collections.Counter[str]) -> None:
        super().__init__(context)
        self._asked = asked

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            object.__getattribute__(self, "_asked")[name] += 1
        return super().__getattribute__(name)


async def test_a_call_in_a_trace_not_sampled_does_no_span_work_past_its_start() -> None:
    """The sampler's decision is read once; a span that records nothing gets no attributes,
    status or end, and a retry no span of its own. The span's context still goes out."""
    spy = SpyTracerProvider()
    emulator = RecordingEmulator(keys={KEY: 100})
    hooks = scripted(emulator, {1: SERVER_ERROR})
    async with AsyncNanoBanana(
        KEY,
        transport=emulator.transport(),
        retry_policy=FAST,
        hooks=hooks,
        tracer_provider=spy,
    ) as client:
        await client.generate("a red fox", model=MODEL)
    # The attributes a sampler reads are given at the start; nothing after it.
    assert spy.started == [
        (
            GENERATE,
            {"nanobanana.model": MODEL, "nanobanana.image_size": "1:1", "nanobanana.num": 1},
        )
    ]
    assert spy.asked["is_recording"] == 1
    assert set(spy.asked) == {"is_recording", "get_span_context"}  # the latter: traceparent
    assert len(emulator.traceparents) == 2
    assert len(set(emulator.traceparents)) == 1  # both attempts: the call's context


async def test_calls_a_stopped_batch_held_back_are_not_errors(otel: Otel) -> None:
    # "insufficient credits" stops the batch, 50 ms after the first request.
    emulator = Emulator(keys={KEY: 0}, faults=Faults(latency=0.05))
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, **otel.providers
    ) as client:
        # The rate limit (a start every 250 ms) holds the later jobs back, inside their calls,
        # until the first one's answer is in.
        report = await client.run_batch(["a", "b", "c"], concurrency=3, max_per_second=4)
    assert (report.failed, report.skipped) == (1, 2)
    calls = otel.spans(GENERATE)
    sent = [c for c in calls if dict(c.attributes or {})["nanobanana.attempts"] == 1]
    held = [c for c in calls if dict(c.attributes or {})["nanobanana.attempts"] == 0]
    assert len(sent) == 1
    assert sent[0].status.status_code == StatusCode.ERROR
    assert len(held) == 2
    assert {c.status.status_code for c in held} == {StatusCode.UNSET}
    assert all("error.type" not in dict(c.attributes or {}) for c in held)
    assert emulator.stats.generate_requests == 1
