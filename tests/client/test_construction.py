"""AsyncNanoBanana's construction and lifecycle: keys, base URLs, plain http, repr, closing.

Each test plugs a respx router into the client as its transport (``httpx.MockTransport``), so
every request the client makes is recorded and nothing touches the network; a few use
``respx.mock`` to patch the client's default transport instead.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from nanobanana_async import (
    AsyncNanoBanana,
    AuthenticationError,
    InvalidRequestError,
    NanoBananaError,
)
from tests.client.mocked import (
    BASE,
    GENERATE,
    KEY,
    client_for,
    key_pieces,
    ok,
    seq,
)

pytestmark = pytest.mark.anyio


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


@pytest.mark.parametrize(
    "base_url",
    ["https://user:s3cret-pw@api.test", "http://user@127.0.0.1:8000", "https://:pw@a.test"],
)
def test_credentials_in_the_base_url_are_refused_without_quoting_them(base_url: str) -> None:
    # httpx would send them as Basic auth instead of the key (on some paths only).
    with pytest.raises(InvalidRequestError, match="user name or password") as caught:
        AsyncNanoBanana(KEY, base_url=base_url)
    assert "s3cret" not in str(caught.value)
    assert "pw" not in str(caught.value)
    assert caught.value.param == "base_url"


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
