"""generate() against mocked HTTP: requests, jobs, pricing, and every response shape.

Each test plugs a respx router into the client as its transport (``httpx.MockTransport``), so
every request the client makes is recorded and nothing touches the network; a few use
``respx.mock`` to patch the client's default transport instead.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from nanobanana_async import (
    DEFAULT_MODEL,
    APIError,
    AsyncNanoBanana,
    AuthenticationError,
    BadRequestError,
    Generation,
    InsufficientCreditsError,
    InvalidRequestError,
    Job,
    MalformedResponseError,
    PricingTable,
    RateLimitError,
    ServerError,
)
from tests.client.mocked import (
    BASE,
    FAST,
    GENERATE,
    HTTPX_ABANDONED_GENERATORS,
    KEY,
    client_for,
    client_with,
    key_pieces,
    ok,
)

pytestmark = pytest.mark.anyio


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
