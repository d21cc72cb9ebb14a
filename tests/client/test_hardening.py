"""The client's side of issue 11's findings (``f<N>`` is the finding): what a server or a
caller can hand the client that used to crash it, leak the key, or be paid twice."""

from __future__ import annotations

import logging
import math
import urllib.parse

import httpx
import pytest
import respx

from nanobanana_async import AsyncNanoBanana, InvalidRequestError, Job, ServerError
from tests.client.mocked import BASE, CDN, FAST, GENERATE, KEY, client_for, ok, seq

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("status", [500, 503])
async def test_f06_a_5xx_around_a_success_body_is_a_generation(
    router: respx.MockRouter, status: int
) -> None:
    body = {"code": 0, "message": "ok", "data": {"url": f"{CDN}/a.png"}}
    route = router.post(GENERATE).mock(return_value=httpx.Response(status, json=body))
    async with client_for(router) as client:
        generation = await client.generate("paid once")
    assert generation.urls == (f"{CDN}/a.png",)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "base_url",
    [
        "https://" + "b" * 64 + ".example",
        "https://api.example:99999",
        "https://exa\udcffmple",
        "https://",
    ],
)
def test_f07_a_bad_base_url_host_is_an_invalid_request(base_url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AsyncNanoBanana(KEY, base_url=base_url)
    assert info.value.param == "base_url"


@pytest.mark.parametrize(
    "key", ["nb-clé-0123456789abcdef", "nb-key-\u00a00123456789", "nb key with spaces 0123"]
)
def test_f15_a_key_that_is_not_printable_ascii_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AsyncNanoBanana(key, base_url=BASE)
    assert info.value.param == "api_key"
    shown = f"{info.value} {info.value!r} {info.value.args}"
    assert key not in shown
    assert key[:8] not in shown
    assert "position" in str(info.value)


@pytest.mark.parametrize("timeout", [math.nan, -1.0, 0.0, math.inf, "10", True])
def test_f16_a_bad_timeout_is_an_invalid_request(timeout: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AsyncNanoBanana(KEY, base_url=BASE, timeout=timeout)  # type: ignore[arg-type]
    assert info.value.param == "timeout"


def test_f16_a_bad_bound_in_an_httpx_timeout_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="read"):
        AsyncNanoBanana(KEY, base_url=BASE, timeout=httpx.Timeout(10.0, read=math.nan))


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        KEY.upper(),
        KEY.lower(),
        urllib.parse.quote(KEY, safe=""),
        urllib.parse.quote(KEY, safe="").lower(),
        KEY.swapcase(),
    ],
)
async def test_f18_the_key_is_redacted_in_any_form_the_server_echoes_it(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture, echo: str
) -> None:
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    failing = httpx.Response(500, json={"code": 500, "message": f"upstream rejected {echo}"})
    router.post(GENERATE).mock(side_effect=seq(failing, failing, failing))
    async with client_for(router) as client:
        with pytest.raises(ServerError) as info:
            await client.generate("echo")
    logged = " ".join(record.getMessage() for record in caplog.records)
    for text in (str(info.value), logged):
        assert KEY.lower() not in text.lower()
        assert urllib.parse.quote(KEY, safe="").lower() not in text.lower()
    assert "***" in str(info.value)


async def test_f19_a_partial_answer_costs_what_it_returned(router: respx.MockRouter) -> None:
    router.post(GENERATE).mock(
        side_effect=seq(ok(f"{CDN}/1.png"), ok(*(f"{CDN}/{i}" for i in "abcd")))
    )
    async with client_for(router) as client:
        partial = await client.generate(Job("three", num=3, model="gemini-2.5-flash-image-hd"))
        extra = await client.generate(Job("two", num=2, model="gemini-2.5-flash-image-hd"))
    assert partial.partial
    assert partial.credits == 5  # one image of five credits, not three
    assert partial.extra_images == 0
    assert not extra.partial
    assert extra.extra_images == 2
    assert extra.credits == 10  # charged as asked


SLASHED = "nb/live+0123456789=abcdef:XYZW"


@pytest.mark.parametrize(
    "echo",
    [
        urllib.parse.quote(SLASHED, safe=""),
        urllib.parse.quote(SLASHED, safe="").lower(),
        urllib.parse.quote_plus(SLASHED, safe=""),
        SLASHED.replace("/", "\\/"),
    ],
)
async def test_f18_a_percent_encoded_or_escaped_echo_is_redacted(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture, echo: str
) -> None:
    assert echo != SLASHED
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    failing = httpx.Response(500, json={"code": 500, "message": f"bad key={echo}"})
    router.post(GENERATE).mock(side_effect=seq(failing, failing, failing))
    client = AsyncNanoBanana(
        SLASHED,
        base_url=BASE,
        transport=httpx.MockTransport(router.async_handler),
        retry_policy=FAST,
    )
    async with client:
        with pytest.raises(ServerError) as info:
            await client.generate("echo")
    logged = " ".join(record.getMessage() for record in caplog.records)
    for text in (str(info.value), logged):
        assert echo.lower() not in text.lower()
    assert "***" in str(info.value)
