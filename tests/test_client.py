"""AsyncNanoBanana against mocked HTTP: construction, generate, errors, retries, download.

Most tests plug a respx router into the client as its transport (``httpx.MockTransport``), so
every request the client makes is recorded and nothing touches the network; a few use
``respx.mock`` to patch the client's default transport instead.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import httpx
import pytest
import respx

from nanobanana_async import (
    DEFAULT_MODEL,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncNanoBanana,
    AuthenticationError,
    BadRequestError,
    Generation,
    InsufficientCreditsError,
    InvalidRequestError,
    Job,
    MalformedResponseError,
    NanoBananaError,
    PricingTable,
    RateLimitError,
    RetryPolicy,
    ServerError,
)

pytestmark = pytest.mark.anyio

KEY = "nb-live-0123456789abcdefXYZW"
BASE = "https://api.nanobanana.test"
GENERATE = BASE + "/v1/images/generate"
CDN = "https://cdn.images.test"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40

# Stopping early inside httpx's nested async generators (Response.aiter_bytes -> aiter_raw -> the
# transport's stream) leaves the inner ones to the garbage collector, and Trio warns about each
# one. The SDK cannot close them from outside: encode/httpx#3686, encode/httpx#3777.
HTTPX_ABANDONED_GENERATORS = pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")


def ok(*urls: str) -> httpx.Response:
    url: str | list[str] = urls[0] if len(urls) == 1 else list(urls)
    return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": url}})


def seq(*outcomes: httpx.Response | Exception) -> list[httpx.Response | Exception]:
    """What a route answers to successive requests."""
    return list(outcomes)


def server_error() -> httpx.Response:
    return httpx.Response(500, json={"code": 500, "message": "server error"})


def key_pieces(text: str, size: int = 8) -> list[str]:
    """Every ``size``-character piece of the key found in ``text``."""
    return [KEY[i : i + size] for i in range(len(KEY) - size + 1) if KEY[i : i + size] in text]


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(using=None, assert_all_mocked=True, assert_all_called=False)


def client_for(router: respx.MockRouter, **kwargs: Any) -> AsyncNanoBanana:
    kwargs.setdefault("retry_policy", FAST)
    kwargs.setdefault("base_url", BASE)
    return AsyncNanoBanana(KEY, transport=httpx.MockTransport(router.async_handler), **kwargs)


def client_with(
    handler: Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]], **kwargs: Any
) -> AsyncNanoBanana:
    kwargs.setdefault("retry_policy", FAST)
    kwargs.setdefault("base_url", BASE)
    return AsyncNanoBanana(KEY, transport=httpx.MockTransport(handler), **kwargs)


# -- construction ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("NANOBANANA_API_KEY", raising=False)
    monkeypatch.delenv("NANOBANANA_BASE_URL", raising=False)
    return monkeypatch


async def test_key_and_base_url_from_the_environment(
    clean_env: pytest.MonkeyPatch, router: respx.MockRouter
) -> None:
    clean_env.setenv("NANOBANANA_API_KEY", KEY)
    clean_env.setenv("NANOBANANA_BASE_URL", "https://env.nanobanana.test/")
    route = router.post("https://env.nanobanana.test/v1/images/generate").mock(
        return_value=ok("https://i/1.png")
    )
    async with AsyncNanoBanana(transport=httpx.MockTransport(router.async_handler)) as client:
        assert client.base_url.startswith("https://env.nanobanana.test")
        await client.generate("x")
    assert route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


async def test_explicit_arguments_beat_the_environment(
    clean_env: pytest.MonkeyPatch, router: respx.MockRouter
) -> None:
    clean_env.setenv("NANOBANANA_API_KEY", "env-key-that-must-not-be-used-1234")
    clean_env.setenv("NANOBANANA_BASE_URL", "https://env.nanobanana.test")
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        await client.generate("x")
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


def test_default_base_url(clean_env: pytest.MonkeyPatch) -> None:
    client = AsyncNanoBanana(KEY)
    assert client.base_url.rstrip("/") == "https://api.nanobananaapi.dev"


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key_is_a_clear_error(clean_env: pytest.MonkeyPatch, key: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AsyncNanoBanana(key)
    assert "NANOBANANA_API_KEY" in str(info.value)
    assert "api_key" in str(info.value)


def test_empty_env_key_is_missing(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NANOBANANA_API_KEY", "")
    with pytest.raises(InvalidRequestError, match="NANOBANANA_API_KEY"):
        AsyncNanoBanana()


@pytest.mark.parametrize("key", [KEY + "\n", "abc\r\nX-Evil: 1", "a\x00b"])
def test_key_with_control_characters_is_refused(key: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AsyncNanoBanana(key)
    assert key.strip() not in str(info.value)


@pytest.mark.parametrize(
    "base_url", ["http://api.nanobananaapi.dev", "http://10.0.0.5:8080", "http://example.com/"]
)
def test_plain_http_is_refused_for_remote_hosts(base_url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AsyncNanoBanana(KEY, base_url=base_url)
    assert info.value.param == "base_url"
    assert "allow_insecure_http" in str(info.value)
    assert KEY not in str(info.value)


def test_plain_http_from_the_environment_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NANOBANANA_BASE_URL", "http://api.nanobananaapi.dev")
    with pytest.raises(InvalidRequestError):
        AsyncNanoBanana(KEY)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8000",
        "http://127.0.0.2",
        "http://localhost:8000",
        "http://LOCALHOST:8000",
        "http://[::1]:8000",
    ],
)
def test_plain_http_is_allowed_for_loopback(base_url: str) -> None:
    client = AsyncNanoBanana(KEY, base_url=base_url)
    assert client.base_url.startswith("http://")


def test_plain_http_is_allowed_on_request() -> None:
    client = AsyncNanoBanana(KEY, base_url="http://10.0.0.5:8080", allow_insecure_http=True)
    assert client.base_url.startswith("http://10.0.0.5:8080")


@pytest.mark.parametrize("base_url", ["ftp://api.test", "api.test", "https://", "/v1"])
def test_bad_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(InvalidRequestError):
        AsyncNanoBanana(KEY, base_url=base_url)


def test_http_client_and_transport_are_exclusive() -> None:
    with pytest.raises(InvalidRequestError):
        AsyncNanoBanana(
            KEY,
            http_client=httpx.AsyncClient(),
            transport=httpx.MockTransport(lambda r: httpx.Response(200)),
        )


@pytest.mark.parametrize("key", [KEY, "short-key"])
def test_repr_masks_the_key(key: str) -> None:
    client = AsyncNanoBanana(key, base_url=BASE)
    for text in (repr(client), str(client), f"{client}", f"{client!r}"):
        assert key not in text
        assert BASE in text
        pieces = [key[i : i + 6] for i in range(len(key) - 5) if key[i : i + 6] in text]
        assert not pieces


async def test_the_key_never_appears_in_logs(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    router.post(GENERATE).mock(
        side_effect=seq(
            httpx.Response(500, text=f"proxy saw Authorization: Bearer {KEY}"),
            httpx.Response(200, json={"code": 401, "message": f"bad key {KEY}"}),
        )
    )
    async with client_for(router) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate("x")
    assert any(r.name == "nanobanana_async" for r in caplog.records)
    assert not key_pieces(caplog.text)
    assert not key_pieces(str(info.value))
    assert not key_pieces(repr(info.value))


# -- lifecycle -------------------------------------------------------------------------------


class RecordingTransport(httpx.MockTransport):
    closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_async_with_closes_what_the_client_owns() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return ok("https://i/1.png")

    transport = RecordingTransport(handler)
    async with AsyncNanoBanana(KEY, base_url=BASE, transport=transport) as client:
        await client.generate("x")
        assert not transport.closed
    assert transport.closed


async def test_the_callers_http_client_is_never_closed(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    http = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
    try:
        async with AsyncNanoBanana(KEY, base_url=BASE, http_client=http) as client:
            await client.generate("x")
        assert not http.is_closed
        client2 = AsyncNanoBanana(KEY, base_url=BASE, http_client=http)
        await client2.generate("y")
        await client2.aclose()
        assert not http.is_closed
        # Still usable by its owner.
        response = await http.post(GENERATE, json={})
        assert response.status_code == 200
    finally:
        await http.aclose()
    assert route.call_count == 3
    assert route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"


async def test_a_closed_client_refuses_to_work(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    client = client_for(router)
    await client.generate("x")
    await client.aclose()
    await client.aclose()  # closing twice is harmless
    with pytest.raises(NanoBananaError, match="closed"):
        await client.generate("x")
    with pytest.raises(NanoBananaError, match="closed"):
        await client.download("https://cdn.images.test/1.png", "/nonexistent/never.png")
    assert route.call_count == 1


async def test_a_client_closed_by_async_with_refuses_to_work(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        pass
    with pytest.raises(NanoBananaError, match="closed"):
        await client.generate("x")
    assert route.call_count == 0


# -- generate --------------------------------------------------------------------------------


async def test_generate_one_image(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://cdn.images.test/a.png"))
    async with client_for(router) as client:
        generation = await client.generate(
            "a banana", model="gemini-3-pro-image-preview", image_size="16:9"
        )
    assert isinstance(generation, Generation)
    assert generation.urls == ("https://cdn.images.test/a.png",)
    assert generation.model == "gemini-3-pro-image-preview"
    assert generation.image_size == "16:9"
    assert generation.num == 1
    assert generation.credits == 8
    assert generation.elapsed >= 0

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == GENERATE
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"]
    assert json.loads(request.content) == {
        "prompt": "a banana",
        "num": 1,
        "model": "gemini-3-pro-image-preview",
        "image_size": "16:9",
    }


async def test_generate_defaults(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        generation = await client.generate("x")
    body = json.loads(route.calls.last.request.content)
    assert body == {"prompt": "x", "num": 1, "model": DEFAULT_MODEL, "image_size": "1:1"}
    assert generation.credits == 2


async def test_generate_several_images(router: respx.MockRouter) -> None:
    urls = [f"https://cdn.images.test/{i}.png" for i in range(3)]
    route = router.post(GENERATE).mock(return_value=ok(*urls))
    async with client_for(router) as client:
        generation = await client.generate(
            "x", model="gemini-3.1-flash-image-preview-4k", image_size="21:9", num=3
        )
    assert generation.urls == tuple(urls)
    assert generation.num == 3
    assert generation.credits == 8 * 3
    assert json.loads(route.calls.last.request.content)["num"] == 3


async def test_generate_takes_a_job(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png", "https://i/2.png"))
    job = Job("a cat", "gemini-2.5-flash-image-hd", "3:4", 2, id="cat")
    async with client_for(router) as client:
        generation = await client.generate(job)
    assert json.loads(route.calls.last.request.content) == job.to_body()
    assert generation.credits == 10
    assert generation.image_size == "3:4"


@pytest.mark.parametrize(
    "override", [{"model": "gemini-3-pro-image-preview"}, {"image_size": "16:9"}, {"num": 3}]
)
async def test_a_job_with_conflicting_arguments_is_refused(
    router: respx.MockRouter, override: dict[str, Any]
) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError, match="Job") as info:
            await client.generate(Job("a cat"), **override)
        assert info.value.param == next(iter(override))
        with pytest.raises(InvalidRequestError, match="Job"):
            client.make_job(Job("a cat"), **override)
        # Arguments that agree with the job are harmless.
        await client.generate(Job("a cat", image_size="16:9"), image_size="16:9")
    assert route.call_count == 1


async def test_base_url_with_a_path_prefix(router: respx.MockRouter) -> None:
    route = router.post("https://gw.test/nano/v1/images/generate").mock(
        return_value=ok("https://i/1.png")
    )
    async with client_for(router, base_url="https://gw.test/nano/") as client:
        await client.generate("x")
    assert route.call_count == 1


async def test_generate_through_the_default_transport() -> None:
    # respx.mock patches the transport the client builds for itself.
    async with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GENERATE).mock(return_value=ok("https://i/1.png"))
        async with AsyncNanoBanana(KEY, base_url=BASE, retry_policy=FAST) as client:
            with pytest.raises(InvalidRequestError):
                await client.generate("   ")
            assert route.call_count == 0
            generation = await client.generate("x")
    assert generation.urls == ("https://i/1.png",)
    assert route.call_count == 1


INVALID_CALLS: list[tuple[Any, dict[str, Any], str]] = [
    ("", {}, "prompt"),
    ("  \n\t ", {}, "prompt"),
    (None, {}, "job"),
    (42, {}, "job"),
    (b"bytes", {}, "job"),
    ("x", {"model": "gemini-9-ultra"}, "model"),
    ("x", {"model": ""}, "model"),
    ("x", {"image_size": "21:9"}, "image_size"),
    ("x", {"model": "gemini-3-pro-image-preview-4k", "image_size": "1:8"}, "image_size"),
    ("x", {"image_size": "2:1"}, "image_size"),
    ("x", {"num": 0}, "num"),
    ("x", {"num": -1}, "num"),
    ("x", {"num": True}, "num"),
    ("x", {"num": 1.0}, "num"),
    ("x", {"num": 2.5}, "num"),
]


@pytest.mark.parametrize(("prompt", "kwargs", "param"), INVALID_CALLS)
async def test_invalid_input_sends_nothing(
    router: respx.MockRouter, prompt: Any, kwargs: dict[str, Any], param: str
) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError) as info:
            await client.generate(prompt, **kwargs)
    assert info.value.param == param
    assert isinstance(info.value, ValueError)
    assert route.call_count == 0
    assert router.calls.call_count == 0


async def test_custom_pricing_makes_a_model_acceptable(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png", "https://i/2.png"))
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError):
            await client.generate("x", model="acme-image-1")
    assert route.call_count == 0
    async with client_for(router, pricing={"acme-image-1": 7}) as client:
        generation = await client.generate("x", model="acme-image-1", num=2)
        # A mapping extends the built-in prices.
        assert client.pricing["gemini-2.5-flash-image"] == 2
    assert generation.credits == 14
    assert json.loads(route.calls.last.request.content)["model"] == "acme-image-1"


async def test_pricing_table_replaces_the_prices(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    table = PricingTable({"acme-image-1": 3, "gemini-2.5-flash-image": 1})
    async with client_for(router, pricing=table) as client:
        assert (await client.generate("x")).credits == 1
        with pytest.raises(InvalidRequestError):
            await client.generate("x", model="gemini-3-pro-image-preview")
    assert route.call_count == 1


async def test_pricing_from_a_file(router: respx.MockRouter, tmp_path: pathlib.Path) -> None:
    router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"acme-image-1": 9, "gemini-2.5-flash-image": 3}))
    async with client_for(router, pricing=prices) as client:
        assert (await client.generate("x", model="acme-image-1")).credits == 9
        assert (await client.generate("x")).credits == 3
        assert client.pricing["gemini-3-pro-image-preview-4k"] == 16


async def test_a_job_priced_elsewhere_is_refused_before_sending(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    job = Job("x", "acme-image-1", pricing={"acme-image-1": 1})
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError) as info:
            await client.generate(job)
    assert info.value.param == "model"
    assert route.call_count == 0


def test_estimate_uses_the_client_pricing() -> None:
    client = AsyncNanoBanana(KEY, base_url=BASE, pricing={"gemini-2.5-flash-image": 1})
    estimate = client.estimate(["a", Job("b", "gemini-3-pro-image-preview-4k", num=2), "c"])
    assert estimate.total == 1 + 32 + 1
    assert dict(estimate.by_model) == {
        "gemini-2.5-flash-image": 2,
        "gemini-3-pro-image-preview-4k": 32,
    }


# -- every response shape through the client -------------------------------------------------

SHAPES: list[tuple[str, int, bytes, type[APIError], int | None]] = [
    ("200 code 400", 200, b'{"code": 400, "message": "invalid image_size"}', BadRequestError, 400),
    ("200 code 401", 200, b'{"code": 401, "message": "invalid API key"}', AuthenticationError, 401),
    ("200 code 500", 200, b'{"code": 500, "message": "server error"}', ServerError, 500),
    ("200 code 429", 200, b'{"code": 429, "message": "too many"}', RateLimitError, 429),
    ("200 unknown code", 200, b'{"code": 4242, "message": "odd"}', APIError, 4242),
    (
        "200 insufficient",
        200,
        b'{"code": 400, "message": "INSUFFICIENT CREDITS"}',
        InsufficientCreditsError,
        400,
    ),
    ("400 json", 400, b'{"code": 400, "message": "bad num"}', BadRequestError, 400),
    (
        "400 insufficient",
        400,
        b'{"code": 400, "message": "Insufficient credits (need 8)"}',
        InsufficientCreditsError,
        400,
    ),
    ("401 json", 401, b'{"code": 401, "message": "invalid API key"}', AuthenticationError, 401),
    ("429 json", 429, b'{"code": 429, "message": "slow down"}', RateLimitError, 429),
    ("500 json", 500, b'{"code": 500, "message": "server error"}', ServerError, 500),
    ("503 json code 500", 503, b'{"code": 500, "message": "overloaded"}', ServerError, 500),
    ("502 html", 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", ServerError, None),
    ("504 empty", 504, b"", ServerError, None),
    ("401 empty", 401, b"", AuthenticationError, None),
    ("200 not json", 200, b"<html>maintenance</html>", MalformedResponseError, None),
    ("200 empty", 200, b"", MalformedResponseError, None),
    ("200 no data", 200, b'{"code": 0, "message": "ok"}', MalformedResponseError, 0),
    ("200 url int", 200, b'{"code": 0, "data": {"url": 7}}', MalformedResponseError, 0),
    ("200 url empty list", 200, b'{"code": 0, "data": {"url": []}}', MalformedResponseError, 0),
    (
        "200 url list of non-strings",
        200,
        b'{"code": 0, "data": {"url": ["https://i/1.png", {"u": 1}]}}',
        MalformedResponseError,
        0,
    ),
]


@pytest.mark.parametrize(
    ("status", "content", "cls", "code"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
async def test_response_shape_maps_to_its_error(
    router: respx.MockRouter, status: int, content: bytes, cls: type[APIError], code: int | None
) -> None:
    route = router.post(GENERATE).mock(return_value=httpx.Response(status, content=content))
    async with client_for(router, max_retries=0) as client:
        with pytest.raises(APIError) as info:
            await client.generate("x")
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.message
    if cls is not MalformedResponseError and b'"message"' in content:
        assert info.value.message == json.loads(content)["message"]
    assert route.call_count == 1


async def test_key_echoed_by_the_server_is_redacted(router: respx.MockRouter) -> None:
    router.post(GENERATE).mock(
        return_value=httpx.Response(
            401, json={"code": 401, "message": f"invalid API key: Bearer {KEY}"}
        )
    )
    async with client_for(router) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate("x")
    assert not key_pieces(str(info.value))
    assert not key_pieces(info.value.message)
    assert not key_pieces(repr(info.value))
    assert "invalid API key" in info.value.message


async def test_huge_generate_response_is_refused(router: respx.MockRouter) -> None:
    huge = b'{"code": 0, "message": "' + b"x" * (2 << 20) + b'", "data": {"url": "https://i/1"}}'
    route = router.post(GENERATE).mock(return_value=httpx.Response(200, content=huge))
    async with client_for(router) as client:
        with pytest.raises(MalformedResponseError) as info:
            await client.generate("x")
    assert "cap" in str(info.value)
    assert route.call_count == 1  # the server may have charged: not retried


@HTTPX_ABANDONED_GENERATORS
async def test_huge_streamed_response_without_length_is_refused() -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b'{"code": 0, "message": "'
        for i in range(64):
            pulled.append(i)
            yield b" " * (64 << 10)
        yield b'"}'

    requests: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=body())

    async with client_with(handler) as client:
        with pytest.raises(MalformedResponseError):
            await client.generate("x")
    assert len(requests) == 1
    # Reading stopped shortly after the 1 MiB cap instead of buffering all 4 MiB.
    assert len(pulled) < 24


# -- retries ---------------------------------------------------------------------------------


async def test_a_huge_error_page_is_still_a_retried_server_error(router: respx.MockRouter) -> None:
    page = b"<html>" + b"x" * (2 << 20) + b"</html>"
    route = router.post(GENERATE).mock(
        side_effect=seq(httpx.Response(502, content=page), ok("https://i/1.png"))
    )
    async with client_for(router) as client:
        generation = await client.generate("x")
    assert generation.urls == ("https://i/1.png",)
    assert route.call_count == 2


@pytest.mark.parametrize("max_retries", [-1, 1.5, True])
def test_a_bad_max_retries_is_an_invalid_request(max_retries: Any) -> None:
    with pytest.raises(InvalidRequestError, match="max_retries"):
        AsyncNanoBanana(KEY, max_retries=max_retries)


async def test_a_bad_per_call_max_retries_sends_nothing(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError, match="max_retries"):
            await client.generate("x", max_retries=-2)
    assert route.call_count == 0


async def test_a_number_timeout_never_times_out_waiting_for_the_pool(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router, timeout=5.0) as client:
        await client.generate("x")
    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": None}


async def test_server_errors_are_retried_max_retries_times_by_default(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router) as client:
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == 3


@pytest.mark.parametrize("max_retries", [0, 1, 4])
async def test_client_level_max_retries(router: respx.MockRouter, max_retries: int) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router, max_retries=max_retries) as client:
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == max_retries + 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_per_call_max_retries(router: respx.MockRouter, max_retries: int) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router, max_retries=5) as client:
        with pytest.raises(ServerError):
            await client.generate("x", max_retries=max_retries)
        assert route.call_count == max_retries + 1
        # The override is for that call only.
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == max_retries + 1 + 6


async def test_retry_policy_max_retries_is_used(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    policy = RetryPolicy(max_retries=1, initial_delay=0.001, max_delay=0.01)
    async with client_for(router, retry_policy=policy) as client:
        assert client.retry_policy.max_retries == 1
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"code": 500, "message": "server error"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(503, content=b""),
        httpx.Response(200, json={"code": 500, "message": "server error"}),
        httpx.Response(408, content=b""),
        httpx.Response(429, json={"code": 429, "message": "slow down"}),
    ],
    ids=["500", "502 html", "503 empty", "200 code 500", "408", "429 no retry-after"],
)
async def test_transient_failure_then_success(
    router: respx.MockRouter, failure: httpx.Response
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(failure, failure, ok("https://i/1")))
    async with client_for(router) as client:
        generation = await client.generate("x")
    assert generation.urls == ("https://i/1",)
    assert route.call_count == 3


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(400, json={"code": 400, "message": "invalid parameters"}),
        httpx.Response(200, json={"code": 400, "message": "invalid parameters"}),
        httpx.Response(401, json={"code": 401, "message": "invalid API key"}),
        httpx.Response(200, json={"code": 401, "message": "invalid API key"}),
        httpx.Response(200, json={"code": 400, "message": "insufficient credits"}),
        httpx.Response(400, json={"code": 400, "message": "Insufficient Credits"}),
        httpx.Response(200, json={"code": 0, "message": "ok", "data": {}}),
    ],
)
async def test_client_errors_are_never_retried(
    router: respx.MockRouter, failure: httpx.Response
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(failure, ok("https://i/1")))
    async with client_for(router, max_retries=5) as client:
        with pytest.raises(APIError):
            await client.generate("x")
    assert route.call_count == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "0.4"},
        {"retry-after-ms": "400"},
        {"Retry-After": "9", "retry-after-ms": "400"},
    ],
)
async def test_429_honours_retry_after(router: respx.MockRouter, headers: dict[str, str]) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(
            httpx.Response(429, headers=headers, json={"code": 429, "message": "slow"}),
            ok("https://i/1"),
        )
    )
    async with client_for(router) as client:
        start = anyio.current_time()
        await client.generate("x")
        elapsed = anyio.current_time() - start
    assert route.call_count == 2
    # The backoff alone is about a millisecond: the wait is the server's.
    assert 0.39 <= elapsed < 3.0


async def test_429_honours_an_integer_retry_after(router: respx.MockRouter) -> None:
    times: list[float] = []

    def respond(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"}, content=b"")
        return ok("https://i/1")

    router.post(GENERATE).mock(side_effect=respond)
    async with client_for(router) as client:
        await client.generate("x")
    assert len(times) == 2
    assert 0.99 <= times[1] - times[0] < 3.0


async def test_429_pauses_every_call_of_the_client(router: respx.MockRouter) -> None:
    times: list[float] = []
    limited = anyio.Event()

    def respond(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        if len(times) == 1:
            limited.set()
            return httpx.Response(429, headers={"retry-after-ms": "500"}, content=b"")
        return ok("https://i/1")

    router.post(GENERATE).mock(side_effect=respond)
    async with client_for(router) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.generate, "first")
        await limited.wait()
        await anyio.sleep(0.05)
        # A second call, started after the 429: it waits out the same pause.
        tg.start_soon(client.generate, "second")
    assert len(times) == 3
    assert all(t - times[0] >= 0.49 for t in times[1:]), [t - times[0] for t in times]


async def test_retry_after_beyond_the_cap_fails_at_once(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(
            httpx.Response(429, headers={"Retry-After": "3600"}, content=b""),
            ok("https://i/1"),
        )
    )
    policy = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_retry_after=30.0)
    async with client_for(router, retry_policy=policy) as client:
        start = anyio.current_time()
        with pytest.raises(RateLimitError) as info:
            await client.generate("x")
        assert anyio.current_time() - start < 1.0
        assert route.call_count == 1
        # Nor does it freeze the other calls of the client.
        start = anyio.current_time()
        await client.generate("y")
        assert anyio.current_time() - start < 1.0
    assert info.value.retry_after == 3600.0
    assert info.value.status_code == 429


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no connection available"),
    ],
)
async def test_failures_before_sending_are_retried(
    router: respx.MockRouter, error: httpx.HTTPError
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(error, error, ok("https://i/1")))
    async with client_for(router) as client:
        generation = await client.generate("x")
    assert generation.urls == ("https://i/1",)
    assert route.call_count == 3


async def test_connect_errors_exhaust_the_retries(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(side_effect=httpx.ConnectError("connection refused"))
    async with client_for(router, max_retries=3) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate("x")
    assert route.call_count == 4
    assert info.value.may_have_been_charged is False
    assert not isinstance(info.value, APITimeoutError)
    assert "connection refused" in str(info.value)


AMBIGUOUS: list[tuple[httpx.HTTPError, type[APIConnectionError]]] = [
    (httpx.ReadTimeout("read timed out"), APITimeoutError),
    (
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        APIConnectionError,
    ),
    (httpx.ReadError("connection reset by peer"), APIConnectionError),
]


@pytest.mark.parametrize(("error", "cls"), AMBIGUOUS)
async def test_failures_after_sending_are_not_retried_by_default(
    router: respx.MockRouter, error: httpx.HTTPError, cls: type[APIConnectionError]
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(error, ok("https://i/1")))
    async with client_for(router, max_retries=5) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate("x")
    assert type(info.value) is cls
    assert route.call_count == 1
    assert info.value.may_have_been_charged is True
    assert "charged" in str(info.value)
    assert "retry_ambiguous" in str(info.value)


@pytest.mark.parametrize(("error", "cls"), AMBIGUOUS)
async def test_failures_after_sending_are_retried_on_request(
    router: respx.MockRouter, error: httpx.HTTPError, cls: type[APIConnectionError]
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(error, error, ok("https://i/1")))
    async with client_for(router, retry_ambiguous=True) as client:
        assert (await client.generate("x")).urls == ("https://i/1",)
    assert route.call_count == 3

    route.reset()
    route.mock(side_effect=seq(error, ok("https://i/2")))
    async with client_for(router) as client:
        assert (await client.generate("x", retry_ambiguous=True)).urls == ("https://i/2",)
    assert route.call_count == 2


async def test_per_call_retry_ambiguous_false_overrides_the_client(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(httpx.ReadTimeout("read timed out"), ok("https://i/1"))
    )
    async with client_for(router, retry_ambiguous=True) as client:
        with pytest.raises(APITimeoutError):
            await client.generate("x", retry_ambiguous=False)
    assert route.call_count == 1


async def test_one_idempotency_key_per_call(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(
            server_error(),
            httpx.ConnectError("refused"),
            ok("https://i/1"),
            server_error(),
            ok("https://i/2"),
            ok("https://i/3"),
        )
    )
    async with client_for(router) as client:
        await client.generate("x")
        await client.generate("x")
        await client.generate("x")
    keys = [call.request.headers["idempotency-key"] for call in route.calls]
    assert len(keys) == 6
    assert all(len(k) >= 16 for k in keys)
    # The same key on every attempt of a call, a new key for every call.
    assert keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[4]
    assert len({keys[0], keys[3], keys[5]}) == 3


async def test_dead_server_stops_being_retried_when_the_budget_drains(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    per_call: list[int] = []
    async with client_for(router) as client:
        for _ in range(40):
            before = route.call_count
            with pytest.raises(ServerError):
                await client.generate("x")
            per_call.append(route.call_count - before)
        assert client.retry_budget.retries_denied > 0
    assert per_call[:5] == [3] * 5
    # Once the budget is spent each call fails fast, after a single attempt.
    assert per_call[-15:] == [1] * 15
    assert sum(per_call) < 0.7 * 40 * 3


async def test_budget_is_shared_by_concurrent_calls(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router) as client:

        async def call() -> None:
            with pytest.raises(ServerError):
                await client.generate("x")

        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(call)
    # Without the budget: 60 calls x 3 attempts.
    assert 60 <= route.call_count < 0.7 * 180


async def test_quarter_failing_server_keeps_being_retried() -> None:
    count = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return server_error() if count % 4 == 0 else ok("https://i/1")

    async with client_with(handler) as client:
        for _ in range(300):
            generation = await client.generate("x")
            assert generation.urls == ("https://i/1",)
        assert client.retry_budget.retries_denied == 0
    # Every fourth request failed and was retried.
    assert count >= 300 + 90


async def test_cancellation_is_not_retried() -> None:
    requests: list[httpx.Request] = []
    arrived = anyio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        arrived.set()
        await anyio.sleep(30)
        return ok("https://i/1")

    policy = RetryPolicy(max_retries=5, initial_delay=0.001, max_delay=0.01, retry_ambiguous=True)
    async with client_with(slow, retry_policy=policy) as client:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.generate, "x")
            await arrived.wait()
            tg.cancel_scope.cancel()
        elapsed = anyio.current_time() - start
        await anyio.sleep(0.05)
    assert len(requests) == 1
    assert elapsed < 1.0


async def test_timeout_scope_around_generate() -> None:
    requests: list[httpx.Request] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        await anyio.sleep(30)
        return ok("https://i/1")

    async with client_with(slow) as client:
        start = anyio.current_time()
        with anyio.move_on_after(0.2) as scope:
            await client.generate("x")
        elapsed = anyio.current_time() - start
        await anyio.sleep(0.05)
    assert scope.cancelled_caught
    assert len(requests) == 1
    assert elapsed < 1.0


# -- download --------------------------------------------------------------------------------


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def part_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".part")]


async def test_download_streams_to_the_path(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    route = router.get(CDN + "/img/1.png").mock(return_value=httpx.Response(200, content=PNG))
    async with client_for(router) as client:
        path = await client.download(CDN + "/img/1.png", str(tmp_path / "out.png"))
    assert isinstance(path, pathlib.Path)
    assert path == tmp_path / "out.png"
    assert path.read_bytes() == PNG
    assert leftovers(tmp_path) == ["out.png"]
    assert "authorization" not in route.calls.last.request.headers


async def test_download_of_a_large_streamed_image(tmp_path: pathlib.Path) -> None:
    chunks = [bytes([i]) * 100_000 for i in range(30)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    async with client_with(handler) as client:
        path = await client.download(CDN + "/big.png", tmp_path / "big.png")
    assert path.read_bytes() == b"".join(chunks)
    assert leftovers(tmp_path) == ["big.png"]


async def test_authorization_goes_to_the_api_origin_only(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    same = router.get(BASE + "/files/1.png").mock(return_value=httpx.Response(200, content=PNG))
    other_urls = [
        CDN + "/1.png",
        "http://api.nanobanana.test/1.png",  # other scheme
        "https://api.nanobanana.test:8443/1.png",  # other port
        "https://nanobanana.test/1.png",  # parent domain
        "https://evil.api.nanobanana.test/1.png",  # subdomain
    ]
    others = [
        router.get(url).mock(return_value=httpx.Response(200, content=PNG)) for url in other_urls
    ]
    async with client_for(router) as client:
        await client.download(BASE + "/files/1.png", tmp_path / "same.png")
        for i, url in enumerate(other_urls):
            await client.download(url, tmp_path / f"other{i}.png")
    assert same.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    for route in others:
        assert route.call_count == 1
        assert "authorization" not in route.calls.last.request.headers


async def test_no_authorization_across_a_redirect_to_another_origin(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    api = router.get(BASE + "/files/1.png").mock(
        return_value=httpx.Response(302, headers={"Location": CDN + "/signed/1.png?sig=abc"})
    )
    cdn = router.get(CDN + "/signed/1.png").mock(return_value=httpx.Response(200, content=PNG))
    async with client_for(router) as client:
        path = await client.download(BASE + "/files/1.png", tmp_path / "1.png")
    assert path.read_bytes() == PNG
    assert api.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert cdn.call_count == 1
    assert "authorization" not in cdn.calls.last.request.headers


async def test_no_authorization_after_a_redirect_back_to_the_api(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    cdn = router.get(CDN + "/1.png").mock(
        return_value=httpx.Response(307, headers={"Location": BASE + "/files/1.png"})
    )
    api = router.get(BASE + "/files/1.png").mock(return_value=httpx.Response(200, content=PNG))
    async with client_for(router) as client:
        await client.download(CDN + "/1.png", tmp_path / "1.png")
    assert "authorization" not in cdn.calls.last.request.headers
    assert api.call_count == 1


@pytest.mark.parametrize("status", [403, 404, 500])
async def test_failed_download_leaves_nothing(
    router: respx.MockRouter, tmp_path: pathlib.Path, status: int
) -> None:
    router.get(CDN + "/1.png").mock(return_value=httpx.Response(status, text="nope"))
    async with client_for(router) as client:
        with pytest.raises(APIError) as info:
            await client.download(CDN + "/1.png?token=secret-token", tmp_path / "1.png")
    assert info.value.status_code == status
    assert "secret-token" not in str(info.value)
    assert leftovers(tmp_path) == []


async def test_failed_download_keeps_an_existing_file(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    router.get(CDN + "/1.png").mock(return_value=httpx.Response(404))
    router.get(CDN + "/2.png").mock(return_value=httpx.Response(200, content=PNG))
    dest = tmp_path / "1.png"
    dest.write_bytes(b"old")
    async with client_for(router) as client:
        with pytest.raises(APIError):
            await client.download(CDN + "/1.png", dest)
        assert dest.read_bytes() == b"old"
        await client.download(CDN + "/2.png", dest)
    assert dest.read_bytes() == PNG
    assert leftovers(tmp_path) == ["1.png"]


async def test_download_cap_by_declared_length(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    router.get(CDN + "/1.png").mock(return_value=httpx.Response(200, content=PNG))
    async with client_for(router) as client:
        with pytest.raises(MalformedResponseError, match="cap"):
            await client.download(CDN + "/1.png", tmp_path / "1.png", max_bytes=len(PNG) - 1)
        path = await client.download(CDN + "/1.png", tmp_path / "2.png", max_bytes=len(PNG))
    assert path.read_bytes() == PNG
    assert leftovers(tmp_path) == ["2.png"]


@HTTPX_ABANDONED_GENERATORS
async def test_download_cap_while_streaming(tmp_path: pathlib.Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"x" * 100_000

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    async with client_with(handler) as client:
        with pytest.raises(MalformedResponseError, match="cap"):
            await client.download(CDN + "/1.png", tmp_path / "1.png", max_bytes=1_000_000)
    assert leftovers(tmp_path) == []


async def test_cancelled_download_leaves_nothing(tmp_path: pathlib.Path) -> None:
    stalled = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 200_000
        stalled.set()
        await anyio.sleep(30)
        yield b"never"

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    async with client_with(handler) as client:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.download, CDN + "/1.png", tmp_path / "1.png")
            await stalled.wait()
            await anyio.sleep(0.05)
            # The download is under way: its temporary file holds the first bytes.
            partial = part_files(tmp_path)
            assert len(partial) == 1
            assert partial[0].stat().st_size > 0
            tg.cancel_scope.cancel()
        assert anyio.current_time() - start < 2.0
    assert leftovers(tmp_path) == []


async def test_download_connection_error(router: respx.MockRouter, tmp_path: pathlib.Path) -> None:
    router.get(CDN + "/1.png").mock(side_effect=httpx.ConnectError("refused"))
    async with client_for(router) as client:
        with pytest.raises(APIConnectionError):
            await client.download(CDN + "/1.png", tmp_path / "1.png")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["ftp://cdn.images.test/1.png", "file:///etc/passwd", "1.png"])
async def test_download_refuses_non_http_urls(
    router: respx.MockRouter, tmp_path: pathlib.Path, url: str
) -> None:
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError):
            await client.download(url, tmp_path / "1.png")
    assert router.calls.call_count == 0
    assert leftovers(tmp_path) == []


async def test_download_creates_missing_directories(
    router: respx.MockRouter, tmp_path: pathlib.Path
) -> None:
    router.get(CDN + "/img/1.png").mock(return_value=httpx.Response(200, content=PNG))
    target = tmp_path / "a" / "b" / "out.png"
    async with client_for(router) as client:
        path = await client.download(CDN + "/img/1.png", target)
    assert path.read_bytes() == PNG
