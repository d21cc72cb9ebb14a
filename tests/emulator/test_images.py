"""The emulator's images: real PNGs with the requested ratio, stateless, on any origin."""

import pytest

from nanobanana_async.emulator import (
    Emulator,
)
from tests.emulator.inprocess import (
    FLASH,
    GENERATE,
    client_for,
    generate,
    parse_png,
)

anyio_test = pytest.mark.anyio


# -- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "width", "height"),
    [
        ("1:1", 256, 256),
        ("16:9", 256, 144),
        ("9:16", 144, 256),
        ("4:5", 205, 256),
        ("21:9", 256, 110),
        ("1:8", 32, 256),
        ("8:1", 256, 32),
    ],
)
@anyio_test
async def test_images_are_real_pngs_with_the_ratio(size: str, width: int, height: int) -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        url = (await generate(client, model=FLASH, image_size=size)).json()["data"]["url"]
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    assert parse_png(response.content)[:2] == (width, height)
    assert emulator.stats.images_served == 1


@anyio_test
async def test_images_differ_by_prompt_and_index_and_are_stable() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        fox = (await generate(client, prompt="a fox", num=2)).json()["data"]["url"]
        owl = (await generate(client, prompt="an owl")).json()["data"]["url"]
        fox_again = (await generate(client, prompt="a fox")).json()["data"]["url"]
        images = [(await client.get(url)).content for url in (*fox, owl, fox_again)]
    pixels = [parse_png(data)[2] for data in images]
    assert len(set(pixels[:3])) == 3
    assert images[3] == images[0]  # the same prompt draws the same picture


@anyio_test
async def test_images_need_no_state_on_the_server() -> None:
    async with client_for(Emulator()) as client:
        url = (await generate(client, image_size="3:2")).json()["data"]["url"]
    # A fresh emulator that never generated it serves the same image.
    fresh = Emulator()
    async with client_for(fresh) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert parse_png(response.content)[:2] == (256, 171)


@pytest.mark.parametrize(
    "path",
    [
        "/images/nope.png",
        "/images/0123456789abcdef_256x256_0_1.jpg",
        "/images/0123456789ABCDEF_256x256_0_1.png",
        "/images/0123456789abcdef_9999x256_0_1.png",
        "/images/0123456789abcdef_2000x256_0_1.png",
        "/images/0123456789abcdef_0x256_0_1.png",
        "/images/0123456789abcdef_256x256_0.png",
        "/",
        "/v1/images/generat",
        "/v1/images/generate/",
    ],
)
@anyio_test
async def test_unknown_paths_are_404(path: str) -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {"code": 404, "message": "not found"}
    assert emulator.stats.images_served == 0


@anyio_test
async def test_wrong_methods_are_405_with_allow() -> None:
    # Issue 20, item 11: the route exists, so HTTP asks for 405 and the methods it takes.
    async with client_for(Emulator()) as client:
        url = (await generate(client)).json()["data"]["url"]
        cases = [
            *[(method, GENERATE, "POST") for method in ("GET", "PUT", "DELETE", "PATCH")],
            ("POST", "/_emulator/stats", "GET"),
            ("DELETE", url, "GET, HEAD"),
            ("POST", url, "GET, HEAD"),
        ]
        for method, target, allow in cases:
            response = await client.request(method, target)
            assert response.status_code == 405, (method, target)
            assert response.headers["allow"] == allow
            assert response.json()["code"] == 405
            assert method in response.json()["message"]
        head = await client.head(url)
        missing = await client.get("/v1/images/nowhere")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0
    assert missing.status_code == 404  # a path that does not exist is still 404


@anyio_test
async def test_image_requests_with_authorization_are_counted() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        url = (await generate(client)).json()["data"]["url"]
        await client.get(url)
        await client.get("/images/malformed.png")
        async with client_for(emulator, key=None) as anonymous:
            await anonymous.get(url)
    assert emulator.stats.image_requests_with_authorization == 2
    assert emulator.stats.images_served == 2


@anyio_test
async def test_image_base_url_puts_images_on_another_host() -> None:
    emulator = Emulator(image_base_url="https://cdn.example.test/")
    async with client_for(emulator) as client:
        url = (await generate(client)).json()["data"]["url"]
        assert url.startswith("https://cdn.example.test/images/")
        assert (await client.get(url)).status_code == 200


@anyio_test
async def test_urls_follow_the_request_origin() -> None:
    async with client_for(Emulator(), base_url="http://localhost:8123") as client:
        url = (await generate(client)).json()["data"]["url"]
    assert url.startswith("http://localhost:8123/images/")
