"""What users of openai-python and httpx expect of a client (issue 20, items 1 to 3).

Errors carry the ``httpx.Request`` and ``httpx.Response`` of the failed attempt, its body and
its ``x-request-id``, on every path a request can take (built only when a call fails);
``with_options`` copies share the pool and the limits; ``generate(timeout=...)`` applies to
one call; a caller's ``http_client`` still names the SDK in ``User-Agent``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from nanobanana_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncNanoBanana,
    AuthenticationError,
    LocalLimits,
    MalformedResponseError,
    NanoBananaError,
    RetryPolicy,
    ServerError,
)
from nanobanana_async._version import __version__
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.http_server import read_request, serving

pytestmark = pytest.mark.anyio

KEY = "sk-conv-0123456789abcdef/XYZ"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
SDK_AGENT = f"nanobanana-async/{__version__}"

# The ways a generate request can leave: the SDK's own transport over a socket (its direct
# path), a caller's transport= (handed the request directly), a caller's http_client= (send).
PATHS = ("direct", "transport", "http_client")


def _client(path: str, emulator: Emulator, base_url: str, **options: Any) -> AsyncNanoBanana:
    if path == "direct":
        return AsyncNanoBanana(KEY, base_url=base_url, **options)
    if path == "transport":
        return AsyncNanoBanana(KEY, transport=emulator.transport(), **options)
    http = httpx.AsyncClient(transport=emulator.transport())
    return AsyncNanoBanana(KEY, http_client=http, **options)


@asynccontextmanager
async def _on(path: str, emulator: Emulator, **options: Any) -> AsyncIterator[AsyncNanoBanana]:
    if path != "direct":
        async with _client(path, emulator, "", **options) as client:
            yield client
        return
    with serve(emulator) as running:
        async with _client(path, emulator, running.base_url, **options) as client:
            yield client


# -- 1. errors carry the request, the response, the body and the request id ------------------


@pytest.mark.parametrize("path", PATHS)
async def test_an_api_error_carries_request_response_body_and_request_id(
    anyio_backend: str, path: str
) -> None:
    emulator = Emulator(keys={"someone-else": 10})
    async with _on(path, emulator, retry_policy=FAST) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate("a red fox", model="gemini-2.5-flash-image")
    error = info.value
    assert error.status_code == 401
    assert error.body == {"code": 401, "message": "invalid API key"}
    assert error.request_id == "req_1"  # the emulator's x-request-id
    response = error.response
    assert isinstance(response, httpx.Response)
    assert response.status_code == 401
    assert response.json() == error.body
    assert response.headers["x-request-id"] == "req_1"
    request = error.request
    assert isinstance(request, httpx.Request)
    assert response.request is request
    assert request.method == "POST"
    assert request.url.path == "/v1/images/generate"
    assert json.loads(request.content) == {
        "prompt": "a red fox",
        "num": 1,
        "model": "gemini-2.5-flash-image",
        "image_size": "1:1",
    }
    assert len(request.headers["idempotency-key"]) == 32
    assert request.headers["user-agent"] == SDK_AGENT
    # The key is masked: the error may be logged, kept in a report or pickled.
    assert request.headers["authorization"] == "Bearer ***"
    assert KEY not in repr(vars(error))


@pytest.mark.parametrize("path", PATHS)
async def test_a_non_json_error_body_is_its_text(anyio_backend: str, path: str) -> None:
    emulator = Emulator(faults=Faults(server_error_rate=1.0), seed=2)  # an nginx 502 page first
    async with _on(path, emulator, retry_policy=FAST, max_retries=0) as client:
        with pytest.raises(ServerError) as info:
            await client.generate("x")
    error = info.value
    assert error.status_code in (500, 502, 503)
    assert error.response is not None
    assert error.response.status_code == error.status_code
    if error.status_code == 500:
        assert isinstance(error.body, dict)
    else:
        assert isinstance(error.body, str)
        assert error.body == error.response.text


async def test_a_gzip_error_body_is_shown_decoded(anyio_backend: str) -> None:
    # The body kept is the decoded one, and the response built from it is not decoded twice.
    emulator = Emulator(keys={"other": 1}, faults=Faults(gzip_rate=1.0))
    async with AsyncNanoBanana(KEY, transport=emulator.transport(), retry_policy=FAST) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate("x")
    assert info.value.response is not None
    assert info.value.response.json() == {"code": 401, "message": "invalid API key"}
    assert "content-encoding" not in info.value.response.headers


async def test_a_body_over_the_cap_is_not_kept(anyio_backend: str) -> None:
    huge = b"x" * ((1 << 20) + 1)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=huge))
    async with AsyncNanoBanana(KEY, transport=transport, retry_policy=FAST) as client:
        with pytest.raises(MalformedResponseError) as info:
            await client.generate("x")
    assert info.value.body is None
    assert info.value.response is not None
    assert info.value.response.status_code == 200
    assert info.value.request is not None


async def test_the_key_echoed_in_a_body_is_redacted_from_body_and_response(
    anyio_backend: str,
) -> None:
    from urllib.parse import quote

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"code": 400, "message": f"bad: {quote(KEY)} {KEY}"})

    async with AsyncNanoBanana(KEY, transport=httpx.MockTransport(echo)) as client:
        with pytest.raises(APIError) as info:
            await client.generate("x")
    assert info.value.body == {"code": 400, "message": "bad: *** ***"}
    assert info.value.response is not None
    assert KEY not in info.value.response.text
    assert quote(KEY) not in info.value.response.text


async def test_a_connection_failure_carries_the_request_and_is_a_nanobanana_error(
    anyio_backend: str,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=FAST, max_retries=0) as client:
        # The one class to catch for any failure of a call, answered or not.
        with pytest.raises(NanoBananaError) as info:
            await client.generate("x")
    error = info.value
    assert isinstance(error, APIConnectionError)
    assert error.request is not None
    assert str(error.request.url) == f"{base_url}/v1/images/generate"
    assert error.request.headers["authorization"] == "Bearer ***"
    assert not hasattr(error, "response")  # no answer came (as openai-python's)


def test_an_error_built_by_hand_has_no_http_details() -> None:
    error = ServerError("boom", status_code=500)
    assert (error.request, error.response, error.body, error.request_id) == (None,) * 4
    assert APIConnectionError("down").request is None


async def test_successes_build_no_exchange(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hot path stays as it was: the description of an attempt is built on failures only.
    from nanobanana_async import errors

    built: list[object] = []
    original = errors.HTTPExchange.__init__

    def spy(self: errors.HTTPExchange, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(errors.HTTPExchange, "__init__", spy)
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        await client.run_batch([f"p {i}" for i in range(20)])
        assert built == []
        with pytest.raises(APIError):
            await client.generate("x", model="gemini-2.5-flash-image", num=11)
    assert len(built) == 1


# -- 2. with_options and a per-call timeout ----------------------------------------------------


def slow_server(delay: float) -> AbstractAsyncContextManager[Any]:
    """A loopback API that answers every request after ``delay`` seconds."""

    class Slow:
        port = 0
        requests = 0

        async def handle(self, stream: Any) -> None:
            async with stream:
                while await read_request(stream) is not None:
                    self.requests += 1
                    await anyio.sleep(delay)
                    body = b'{"code":0,"message":"ok","data":{"url":"http://x/1.png"}}'
                    await stream.send(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )

    return serving(Slow())


async def test_with_options_changes_the_timeout_and_shares_the_pool(anyio_backend: str) -> None:
    async with slow_server(0.3) as server:
        base_url = f"http://127.0.0.1:{server.port}"
        async with AsyncNanoBanana(KEY, base_url=base_url, timeout=5) as client:
            await client.generate("warm")  # leaves one idle connection in the pool
            hasty = client.with_options(timeout=0.05, max_retries=0)
            assert hasty.retry_policy.max_retries == 0
            assert client.retry_policy.max_retries == 2
            with pytest.raises(APITimeoutError):
                await hasty.generate("too slow for the copy")
            assert (await client.generate("fine for the original")).urls
            async with hasty:  # closing the copy closes nothing shared
                pass
            with pytest.raises(NanoBananaError, match="closed"):
                await hasty.generate("the copy is closed")
            assert (await client.generate("the original still sends")).urls
            assert client._own_client is not None
            assert not client._own_client.is_closed
        with pytest.raises(NanoBananaError, match="closed"):
            await client.with_options(max_retries=1).generate("closed with its original")


async def test_a_per_call_timeout(anyio_backend: str) -> None:
    async with slow_server(0.3) as server:
        base_url = f"http://127.0.0.1:{server.port}"
        async with AsyncNanoBanana(KEY, base_url=base_url, timeout=5) as client:
            with pytest.raises(APITimeoutError) as info:
                await client.generate("x", timeout=0.05)
            assert info.value.may_have_been_charged
            assert (await client.generate("y")).urls  # the client's own timeout again
            with pytest.raises(NanoBananaError, match="timeout"):
                await client.generate("z", timeout=-1)
    assert server.requests == 2


async def test_copies_share_the_limits_and_the_retry_budget(anyio_backend: str) -> None:
    emulator = Emulator()
    limits = LocalLimits(max_credits=10)  # 5 images at 2 credits
    async with AsyncNanoBanana(KEY, transport=emulator.transport(), limits=limits) as client:
        copy = client.with_options(max_retries=0)
        assert copy.limits is client.limits
        assert copy.retry_budget is client.retry_budget
        await client.run_batch(["a", "b", "c"])
        report = await copy.run_batch(["d", "e", "f"])
    assert report.succeeded == 2
    assert report.skipped == 1
    assert emulator.stats.generations == 5


async def test_closing_the_original_stops_the_copy_s_batch(anyio_backend: str) -> None:
    emulator = Emulator(faults=Faults(latency=0.2))
    results: list[object] = []
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        copy = client.with_options(max_retries=0)

        async def consume() -> None:
            # A plain loop over the copy's batch runs in the original's task group.
            run = copy.batch([f"p {i}" for i in range(50)], concurrency=2)
            try:
                async for result in run:
                    results.append(result)
            except NanoBananaError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.3)
            await client.aclose()
    assert len(results) < 50
    assert isinstance(results[-1], NanoBananaError)
    assert "closed" in str(results[-1])


# -- 3. User-Agent through a caller's http_client ---------------------------------------------


def _agents() -> tuple[list[str], Callable[[httpx.Request], httpx.Response]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("user-agent", ""))
        if request.method == "GET":
            return httpx.Response(200, content=b"\x89PNG\r\n\x1a\n")
        url = "https://api.nanobanana.test/images/1.png"
        return httpx.Response(200, json={"code": 0, "data": {"url": url}})

    return seen, handler


async def test_an_injected_http_client_still_names_the_sdk(
    anyio_backend: str, tmp_path: Any
) -> None:
    seen, handler = _agents()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        AsyncNanoBanana(KEY, base_url="https://api.nanobanana.test", http_client=http) as client,
    ):
        generation = await client.generate("x")
        await client.download(generation.urls[0], tmp_path / "a.png")
        await client.download("https://cdn.example/b.png", tmp_path / "b.png")
    assert seen == [SDK_AGENT] * 3
    assert http.headers["user-agent"].startswith("python-httpx/")  # the caller's is untouched


async def test_a_caller_s_own_user_agent_is_kept(anyio_backend: str, tmp_path: Any) -> None:
    seen, handler = _agents()
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), headers={"User-Agent": "my-app/2.0"}
    )
    async with (
        http,
        AsyncNanoBanana(KEY, base_url="https://api.nanobanana.test", http_client=http) as client,
    ):
        generation = await client.generate("x")
        await client.download(generation.urls[0], tmp_path / "a.png")
    assert seen == ["my-app/2.0"] * 2


async def test_a_failed_download_carries_its_request_and_response(
    anyio_backend: str, tmp_path: Any
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="no such image", headers={"x-request-id": "img-7"})

    async with AsyncNanoBanana(
        KEY, base_url="https://api.nanobanana.test", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(APIError) as info:
            await client.download("https://api.nanobanana.test/images/1.png?sig=s3cret", tmp_path)
    error = info.value
    assert error.status_code == 404
    assert error.request_id == "img-7"
    assert error.response is not None
    assert error.response.status_code == 404
    assert error.request is not None
    assert str(error.request.url) == "https://api.nanobanana.test/images/1.png"  # no token
    assert error.request.headers["authorization"] == "Bearer ***"
    assert error.body is None  # an image host's error page is not read
