"""The FastAPI example (examples/fastapi_app.py) against the emulator, on asyncio and Trio.

Requests go through ``httpx.ASGITransport``, which does not run the app's lifespan: each test
enters it itself with ``app.router.lifespan_context(app)``. ASGITransport also buffers the
whole response, so the streaming test drives the ASGI app directly, and the last test runs the
module's own ``app`` under uvicorn, configured from the environment as documented.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from examples import fastapi_app
from examples.fastapi_app import create_app
from nanobanana_async import (
    DEFAULT_PRICING,
    AsyncNanoBanana,
    NanoBananaError,
    RetryPolicy,
)
from nanobanana_async.emulator import Emulator, Faults, serve

pytestmark = pytest.mark.anyio

KEY = "sk-fastapi-0123456789abcdefghij"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
EXTENDED = "gemini-3.1-flash-image-preview"


class Factory:
    """A client factory that counts its calls, for ``create_app(client_factory=...)``."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        key: str = KEY,
        max_retries: int | None = None,
    ) -> None:
        self.transport = transport
        self.key = key
        self.max_retries = max_retries
        self.made: list[AsyncNanoBanana] = []

    def __call__(self) -> AsyncNanoBanana:
        client = AsyncNanoBanana(
            self.key, transport=self.transport, retry_policy=FAST, max_retries=self.max_retries
        )
        self.made.append(client)
        return client


@asynccontextmanager
async def running(factory: Callable[[], AsyncNanoBanana]) -> AsyncIterator[httpx.AsyncClient]:
    """The app around ``factory``'s client, lifespan entered, and an HTTP client for it."""
    app = create_app(factory)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app.test"
        ) as http,
    ):
        yield http


def ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# -- one image ---------------------------------------------------------------------------------


async def test_generate_returns_urls_and_credits() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with running(Factory(emulator.transport())) as http:
        r = await http.post(
            "/images",
            json={"prompt": "three pears", "model": EXTENDED, "image_size": "21:9", "num": 3},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["urls"]) == len(set(body["urls"])) == 3
        assert body["credits"] == 3 * DEFAULT_PRICING[EXTENDED]
        assert (body["model"], body["image_size"]) == (EXTENDED, "21:9")
        # The URLs are real: the emulator serves them.
        image = await httpx.AsyncClient(transport=emulator.transport()).get(body["urls"][0])
        assert image.content.startswith(b"\x89PNG")
    assert emulator.stats.generate_requests == 1
    assert emulator.stats.credits_charged == body["credits"]
    assert emulator.balance(KEY) == 100 - body["credits"]


# -- error mapping -----------------------------------------------------------------------------


async def test_insufficient_credits_is_402() -> None:
    emulator = Emulator(keys={KEY: 3})
    async with running(Factory(emulator.transport())) as http:
        first = await http.post("/images", json={"prompt": "a fox"})  # 2 credits
        second = await http.post("/images", json={"prompt": "an owl"})
    assert first.status_code == 200
    assert second.status_code == 402
    assert "credits" in second.json()["detail"]
    assert emulator.stats.generate_requests == 2  # never retried
    assert emulator.balance(KEY) == 1


@pytest.mark.parametrize("as_http_200", [False, True])
async def test_rejected_key_is_502_without_the_key(as_http_200: bool) -> None:
    emulator = Emulator(keys={"sk-some-other-key-000000000": 100}, errors_as_http_200=as_http_200)
    async with running(Factory(emulator.transport())) as http:
        r = await http.post("/images", json={"prompt": "a fox"})
        batch = await http.post("/images/batch", json={"jobs": [{"prompt": "x"}] * 3})
    assert r.status_code == 502
    assert "credentials" in r.json()["detail"]
    for response in (r, batch):
        text = response.text + json.dumps(dict(response.headers))
        assert KEY not in text
        assert KEY[-8:] not in text
        assert "Bearer" not in text
    lines = ndjson(batch.text)
    assert sorted(line["index"] for line in lines) == [0, 1, 2]
    assert [line["status"] for line in lines].count("failed") == 1  # the rest are not sent
    assert emulator.stats.generate_requests == 2  # one per endpoint, never retried


@pytest.mark.parametrize(("retry_after", "header"), [(3.0, "3"), (2.5, "3"), (0.2, "1")])
async def test_rate_limit_is_429_with_retry_after(retry_after: float, header: str) -> None:
    emulator = Emulator(
        keys={KEY: 100}, faults=Faults(rate_limit_rate=1.0, retry_after=retry_after)
    )
    async with running(Factory(emulator.transport(), max_retries=0)) as http:
        r = await http.post("/images", json={"prompt": "a fox"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == header == str(max(1, math.ceil(retry_after)))
    assert emulator.stats.credits_charged == 0


async def test_rate_limit_without_a_delay_has_no_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"code": 429, "message": "slow down"})

    async with running(Factory(httpx.MockTransport(handler), max_retries=0)) as http:
        r = await http.post("/images", json={"prompt": "a fox"})
    assert r.status_code == 429
    assert "retry-after" not in r.headers


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a fox", "model": "gemini-9-ultra"},
        {"prompt": "a fox", "image_size": "21:9"},  # only gemini-3.1-flash-* take 21:9
        {"prompt": "a fox", "model": EXTENDED, "image_size": "7:5"},
        {"model": EXTENDED},  # no prompt
        {"prompt": ""},
        {"prompt": "a fox", "num": 0},
        {"prompt": "a fox", "num": "many"},
        {"prompt": "a fox", "steps": 30},  # unknown field
    ],
    ids=lambda b: json.dumps(b),
)
async def test_bad_input_is_422_and_nothing_is_sent(body: dict[str, Any]) -> None:
    emulator = Emulator(keys={KEY: 100})
    async with running(Factory(emulator.transport())) as http:
        single = await http.post("/images", json=body)
        batch = await http.post("/images/batch", json={"jobs": [{"prompt": "fine"}, body]})
    assert single.status_code == 422, single.text
    assert batch.status_code == 422, batch.text
    assert emulator.stats.requests == 0


async def test_bad_batch_options_are_422() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with running(Factory(emulator.transport())) as http:
        bodies: list[dict[str, Any]] = [
            {"jobs": []},
            {"jobs": [{"prompt": "x"}], "concurrency": 0},
            {"jobs": [{"prompt": "x"}], "concurrency": 10_000},
            {"jobs": [{"prompt": "x"}], "max_credits": -1},
        ]
        for body in bodies:
            r = await http.post("/images/batch", json=body)
            assert r.status_code == 422, body
    assert emulator.stats.requests == 0


@pytest.mark.parametrize("html", [False, True])
async def test_server_error_is_502(html: bool) -> None:
    faults = Faults(server_error_rate=1.0, html_error_share=1.0 if html else 0.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults)
    async with running(Factory(emulator.transport(), max_retries=1)) as http:
        r = await http.post("/images", json={"prompt": "a fox"})
    assert r.status_code == 502
    assert "image service failed (HTTP 5" in r.json()["detail"]
    assert emulator.stats.generate_requests == 2  # the client retried once first


async def test_dropped_connection_is_502() -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(drop_rate=1.0))
    async with running(Factory(emulator.transport(), max_retries=0)) as http:
        r = await http.post("/images", json={"prompt": "a fox"})
    assert r.status_code == 502
    assert r.json()["detail"] == "the image service could not be reached"


async def test_timeout_is_504() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with running(Factory(httpx.MockTransport(handler), max_retries=0)) as http:
        r = await http.post("/images", json={"prompt": "a fox"})
    assert r.status_code == 504
    assert "in time" in r.json()["detail"]


# -- batches -----------------------------------------------------------------------------------


async def test_batch_streams_one_line_per_job() -> None:
    faults = Faults(server_error_rate=0.3)
    emulator = Emulator(keys={KEY: 1000}, faults=faults, seed=7)
    jobs = [{"prompt": f"animal {i}"} for i in range(30)]
    async with running(Factory(emulator.transport(), max_retries=0)) as http:
        r = await http.post(
            "/images/batch", json={"jobs": jobs, "concurrency": 4, "max_credits": 30}
        )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["x-credits-estimate"] == "60"
    lines = ndjson(r.text)
    assert sorted(line["index"] for line in lines) == list(range(30))  # each job exactly once
    by_status: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        assert set(line) == {"index", "status", "urls", "credits", "error"}
        by_status.setdefault(line["status"], []).append(line)
    assert set(by_status) == {"succeeded", "failed", "skipped"}
    for line in by_status["succeeded"]:
        assert len(line["urls"]) == 1
        assert line["credits"] == 2
        assert line["error"] is None
    for line in by_status["failed"] + by_status["skipped"]:
        assert line["urls"] == []
        assert line["credits"] == 0
        assert line["error"]
    assert len(by_status["succeeded"]) == emulator.stats.generations == 15  # the budget
    assert sum(line["credits"] for line in lines) == emulator.stats.credits_charged == 30
    assert len(by_status["failed"]) == emulator.stats.generate_requests - 15


async def test_batch_lines_are_sent_while_the_batch_runs() -> None:
    """Only the first generation may pass until the first line has left the app.

    A response buffered until the batch ends would never send that line: the test would
    hang, and fail_after turns that into a failure.
    """
    emulator = Emulator(keys={KEY: 1000})
    inner = emulator.transport()
    first_line_sent = anyio.Event()
    passed = 0

    class Gate(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal passed
            if passed:
                await first_line_sent.wait()
            passed += 1
            return await inner.handle_async_request(request)

    factory = Factory(Gate())
    app = create_app(factory)
    payload = json.dumps(
        {"jobs": [{"prompt": f"bird {i}"} for i in range(8)], "concurrency": 4}
    ).encode()
    chunks: list[bytes] = []
    generations_at_first_line: list[int] = []
    response_done = anyio.Event()
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await response_done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            if message.get("body"):
                if not chunks:
                    generations_at_first_line.append(emulator.stats.generations)
                    first_line_sent.set()
                chunks.append(message["body"])
            if not message.get("more_body", False):
                response_done.set()

    with anyio.fail_after(30):
        async with app.router.lifespan_context(app):
            await app(batch_scope(), receive, send)
    assert generations_at_first_line == [1]
    lines = ndjson(b"".join(chunks).decode())
    assert sorted(line["index"] for line in lines) == list(range(8))
    assert all(line["status"] == "succeeded" for line in lines)
    assert emulator.stats.generations == 8


def batch_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/images/batch",
        "raw_path": b"/images/batch",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"app.test")],
        "server": ("app.test", 80),
        "client": ("127.0.0.1", 1234),
    }


async def test_caller_hanging_up_cancels_the_batch() -> None:
    """A caller that leaves after the first line: the requests in flight are cancelled,
    nothing more is sent, and the shared client still serves the next request."""
    emulator = Emulator(keys={KEY: 1000})
    inner = emulator.transport()
    gate_open = anyio.Event()
    first_line_sent = anyio.Event()
    entered = cancelled = 0

    class Gate(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal entered, cancelled
            entered += 1
            if entered > 1:
                try:
                    await gate_open.wait()
                except anyio.get_cancelled_exc_class():
                    cancelled += 1
                    raise
            return await inner.handle_async_request(request)

    app = create_app(Factory(Gate()))
    payload = json.dumps(
        {"jobs": [{"prompt": f"cat {i}"} for i in range(20)], "concurrency": 4}
    ).encode()
    chunks: list[bytes] = []
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await first_line_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            first_line_sent.set()

    with anyio.fail_after(30):
        async with app.router.lifespan_context(app):
            await app(batch_scope(), receive, send)
            # The batch ended with the response: every request held at the gate was
            # cancelled, none was sent.
            # The one result taken, plus at most the concurrency dispatched after it (the
            # handler asked for a second result before it saw the caller leave): not 20.
            assert 1 <= entered <= 1 + 4
            assert cancelled == entered - 1
            assert emulator.stats.generate_requests == 1
            gate_open.set()
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://app.test"
            ) as http:
                r = await http.post("/images", json={"prompt": "still here"})
                assert r.status_code == 200
    assert len(ndjson(b"".join(chunks).decode())) == 1
    assert emulator.stats.generations == 2


# -- one client for the whole app ------------------------------------------------------------


async def test_200_concurrent_requests_share_one_client() -> None:
    emulator = Emulator(keys={KEY: 10_000}, faults=Faults(latency=0.01))
    factory = Factory(emulator.transport())
    statuses: list[int] = []

    async with running(factory) as http:

        async def one(i: int) -> None:
            r = await http.post("/images", json={"prompt": f"fish {i}"})
            statuses.append(r.status_code)

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert len(factory.made) == 1  # made once, at startup, not per request

    assert statuses == [200] * 200
    assert emulator.stats.generations == 200
    assert emulator.stats.max_in_flight > 1  # the requests did overlap on the one client
    assert emulator.balance(KEY) == 10_000 - 400
    # The lifespan closed it at shutdown.
    with pytest.raises(NanoBananaError, match="closed"):
        await factory.made[0].generate("after shutdown")


async def test_missing_key_stops_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NANOBANANA_API_KEY", raising=False)
    app = create_app()
    with pytest.raises(NanoBananaError, match="NANOBANANA_API_KEY"):
        async with app.router.lifespan_context(app):
            pass


# -- the documented command: uvicorn examples.fastapi_app:app ---------------------------------


@contextmanager
def uvicorn_serving(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


async def test_module_app_under_uvicorn_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = Emulator(keys={KEY: 100})
    with serve(emulator) as upstream:
        monkeypatch.setenv("NANOBANANA_API_KEY", KEY)
        monkeypatch.setenv("NANOBANANA_BASE_URL", upstream.base_url)
        with uvicorn_serving(fastapi_app.app) as base_url:
            async with httpx.AsyncClient(base_url=base_url) as http:
                r = await http.post("/images", json={"prompt": "a fox"})
                assert r.status_code == 200, r.text
                assert r.json()["urls"][0].startswith(upstream.base_url)
                lines = []
                jobs = {"jobs": [{"prompt": f"p{i}"} for i in range(5)], "concurrency": 2}
                async with http.stream("POST", "/images/batch", json=jobs) as stream:
                    assert stream.status_code == 200
                    async for text in stream.aiter_lines():
                        if text:
                            lines.append(json.loads(text))
    assert sorted(line["index"] for line in lines) == list(range(5))
    assert {line["status"] for line in lines} == {"succeeded"}
    assert emulator.stats.generations == 6
    assert emulator.balance(KEY) == 100 - 12


# -- tracing -----------------------------------------------------------------------------------


async def test_request_spans_parent_the_sdk_spans_and_continue_the_callers_trace() -> None:
    from opentelemetry.trace import SpanKind

    from tests.telemetry.support import Otel, RecordingEmulator, parent_id, span_id

    otel = Otel()
    emulator = RecordingEmulator(keys={KEY: 100})

    def factory() -> AsyncNanoBanana:
        return AsyncNanoBanana(
            KEY,
            transport=emulator.transport(),
            retry_policy=FAST,
            tracer_provider=otel.tracer_provider,
        )

    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
    app = create_app(factory, tracing=True, tracer_provider=otel.tracer_provider)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app.test"
        ) as http,
    ):
        one = await http.post("/images", json={"prompt": "a fox"}, headers=headers)
        many = await http.post(
            "/images/batch", json={"jobs": [{"prompt": "an owl"}, {"prompt": "a heron"}]}
        )
    otel.shutdown()
    assert one.status_code == many.status_code == 200

    image, batch_request = otel.spans("POST /images"), otel.spans("POST /images/batch")
    assert len(image) == len(batch_request) == 1
    server = image[0]
    assert server.kind == SpanKind.SERVER
    assert server.context is not None
    assert f"{server.context.trace_id:032x}" == caller_trace  # the caller's trace goes on
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == caller_span
    assert dict(server.attributes or {})["http.route"] == "/images"
    assert dict(server.attributes or {})["http.response.status_code"] == 200

    calls = otel.spans("nanobanana generate")
    (batch,) = otel.spans("nanobanana batch")
    single = [c for c in calls if parent_id(c) == span_id(server)]
    assert len(single) == 1
    assert parent_id(batch) == span_id(batch_request[0])
    assert [parent_id(c) for c in calls if c not in single] == [span_id(batch)] * 2
    # The API saw the caller's trace id on the single call's request.
    assert emulator.traceparents[0] is not None
    assert emulator.traceparents[0].split("-")[1] == caller_trace
