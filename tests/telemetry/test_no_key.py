"""The API key appears in no span, attribute, event, status, metric or hook event, even when
the server echoes it back in its errors (the SDK redacts its own messages)."""

from __future__ import annotations

import json

import httpx
import pytest

from nanobanana_async import AsyncNanoBanana, BadRequestError, Hooks
from nanobanana_async.emulator import Emulator, Faults

from .support import FAST, KEY, Otel

pytestmark = pytest.mark.anyio


def pieces(key: str = KEY, size: int = 8) -> list[str]:
    return [key[i : i + size] for i in range(len(key) - size + 1)]


def echoing_server() -> httpx.MockTransport:
    """An API that quotes the request's Authorization header in every error it returns."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        echoed = request.headers["authorization"]
        if calls == 1:
            return httpx.Response(500, json={"code": 500, "message": f"down for {echoed}"})
        if calls == 2:
            return httpx.Response(503, text=f"<html>proxy error for {echoed.lower()}</html>")
        return httpx.Response(
            400, json={"code": 400, "message": f"bad key {json.dumps(echoed)[1:-1]}"}
        )

    return httpx.MockTransport(handler)


async def test_the_key_is_in_no_span_attribute_event_or_metric(otel: Otel) -> None:
    events: list[object] = []
    hooks = Hooks(
        before_attempt=events.append,
        after_response=events.append,
        on_retry=events.append,
        on_job_result=events.append,
    )
    async with AsyncNanoBanana(
        KEY, transport=echoing_server(), retry_policy=FAST, hooks=hooks, **otel.providers
    ) as client:
        with pytest.raises(BadRequestError) as raised:
            await client.generate("a red fox")
    assert "***" in str(raised.value)  # the server did echo it, and the SDK redacted it

    emulator = Emulator(keys={KEY: 100}, faults=Faults(server_error_rate=0.3, drop_rate=0.2))
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, hooks=hooks, **otel.providers
    ) as client:
        await client.run_batch([f"prompt {i}" for i in range(10)], concurrency=3)

    texts = [*otel.everything(), *(repr(e) for e in events)]
    assert len(otel.spans()) > 10
    assert len(events) > 30
    leaked = [
        (piece, text[:200])
        for text in texts
        for piece in pieces(KEY.lower())
        if piece in text.lower()  # the server echoed it lower-cased too
    ]
    assert leaked == []
