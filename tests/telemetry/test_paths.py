"""Every path a generate request can take gets the SDK's spans, traceparent and hooks.

The client's own transport posts straight through the SDK's h11 pool, on asyncio and Trio (no
httpx objects: httpx's event hooks and its OpenTelemetry instrumentation never see the
request); a caller's ``http_client`` and an in-process ``transport`` go through httpx. The
emulator notes the ``traceparent`` header each request arrived with.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from nanobanana_async import AsyncNanoBanana, AttemptEvent, Hooks, ResponseEvent, RetryEvent
from nanobanana_async._http.fast import FastTransport
from nanobanana_async.emulator import Faults, serve

from .scripts import SERVER_ERROR
from .support import ATTEMPT, FAST, GENERATE, KEY, Otel, RecordingEmulator, parent_id, span_id
from .support import traceparent as traceparent_of

pytestmark = pytest.mark.anyio

PATHS = ["in-process transport", "default transport over loopback", "caller's http_client"]


@contextlib.contextmanager
def served(emulator: RecordingEmulator) -> Iterator[str]:
    with serve(emulator, "127.0.0.1", 0) as server:
        yield str(server.base_url).rstrip("/")


@contextlib.asynccontextmanager
async def client_on(
    path: str, emulator: RecordingEmulator, hooks: Hooks, otel: Otel
) -> AsyncIterator[tuple[AsyncNanoBanana, str]]:
    options: dict[str, Any] = {"retry_policy": FAST, "hooks": hooks, **otel.providers}
    if path == "in-process transport":
        async with AsyncNanoBanana(KEY, transport=emulator.transport(), **options) as client:
            yield client, "api.nanobananaapi.dev"
        return
    with served(emulator) as base_url:
        if path == "default transport over loopback":
            async with AsyncNanoBanana(KEY, base_url=base_url, **options) as client:
                yield client, "127.0.0.1"
        else:
            async with (
                httpx.AsyncClient() as http,
                AsyncNanoBanana(KEY, base_url=base_url, http_client=http, **options) as client,
            ):
                yield client, "127.0.0.1"


def recording_hooks(emulator: RecordingEmulator, seen: list[str]) -> Hooks:
    def before_attempt(event: AttemptEvent) -> None:
        seen.append(f"before {event.attempt}")
        emulator.faults = SERVER_ERROR if event.attempt == 1 else Faults()

    async def after_response(event: ResponseEvent) -> None:
        seen.append(f"after {event.attempt}: {event.status_code} {event.outcome}")

    def on_retry(event: RetryEvent) -> None:
        seen.append(f"retry {event.attempt}: {event.reason}")

    return Hooks(before_attempt=before_attempt, after_response=after_response, on_retry=on_retry)


@pytest.mark.parametrize("path", PATHS)
async def test_spans_traceparent_and_hooks_on_every_path(path: str, otel: Otel) -> None:
    emulator = RecordingEmulator(keys={KEY: 100})
    seen: list[str] = []
    async with client_on(path, emulator, recording_hooks(emulator, seen), otel) as (client, host):
        if path == "default transport over loopback":
            transport = client._fast_transport
            assert isinstance(transport, FastTransport)
            assert transport.can_post_directly()  # the h11 pool's post, without httpx objects
        generation = await client.generate("a red fox")
    assert len(generation.urls) == 1

    (call,) = otel.spans(GENERATE)
    attempts = otel.spans(ATTEMPT)
    assert len(attempts) == 2
    assert [parent_id(a) for a in attempts] == [span_id(call)] * 2
    # The first request carried the call's context, the retry its own span's.
    assert emulator.traceparents == [traceparent_of(call), traceparent_of(attempts[1])]
    assert [dict(a.attributes or {})["http.response.status_code"] for a in attempts] == [500, 200]
    assert {dict(a.attributes or {})["server.address"] for a in attempts} == {host}
    assert seen == [
        "before 1",
        "after 1: 500 server_error",
        "retry 2: server_error",
        "before 2",
        "after 2: 200 success",
    ]
    assert otel.by("nanobanana.client.requests", "nanobanana.request.outcome") == {
        "server_error": 1,
        "success": 1,
    }


async def test_httpx_instrumentation_of_a_callers_client_adds_no_second_span(otel: Otel) -> None:
    """A caller's instrumented http_client: the call's one attempt makes no span of the
    instrumentation's, and the traceparent on the wire is ours (the instrumentation is told to
    stand aside)."""
    emulator = RecordingEmulator(keys={KEY: 100})
    with served(emulator) as base_url:
        async with httpx.AsyncClient() as http:
            HTTPXClientInstrumentor.instrument_client(http, tracer_provider=otel.tracer_provider)
            try:
                async with AsyncNanoBanana(
                    KEY, base_url=base_url, http_client=http, retry_policy=FAST, **otel.providers
                ) as client:
                    await client.generate("a red fox")
                # The same client's other requests are still traced by the instrumentation.
                await http.get(f"{base_url}/_emulator/stats")
            finally:
                HTTPXClientInstrumentor.uninstrument_client(http)
    (call,) = otel.spans(GENERATE)
    assert otel.spans(ATTEMPT) == []  # one attempt: the call's span stands for it
    assert call.instrumentation_scope is not None
    assert call.instrumentation_scope.name == "nanobanana_async"
    assert emulator.traceparents == [traceparent_of(call)]
    others = [s for s in otel.spans() if s.name not in (GENERATE, ATTEMPT)]
    assert [s.name for s in others] == ["GET"]
