"""download(): streamed, atomic, capped, and the key only for the API's own origin.

Each test plugs a respx router into the client as its transport (``httpx.MockTransport``), so
every request the client makes is recorded and nothing touches the network; a few use
``respx.mock`` to patch the client's default transport instead.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
import respx

from nanobanana_async import (
    APIConnectionError,
    APIError,
    InvalidRequestError,
    MalformedResponseError,
)
from tests.client.mocked import (
    BASE,
    CDN,
    HTTPX_ABANDONED_GENERATORS,
    KEY,
    PNG,
    client_for,
    client_with,
)

pytestmark = pytest.mark.anyio


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
