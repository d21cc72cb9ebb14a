"""The API emulator: routes, validation, ledger, faults, images, counters and the runner.

Most tests drive the ASGI app in-process through ``Emulator.transport()`` on asyncio and Trio;
the runner tests serve it with uvicorn on a loopback socket.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from nanobanana_async import emulator as emulator_module
from nanobanana_async.emulator import (
    FAULT_KINDS,
    Emulator,
    EmulatorStats,
    Faults,
    RunningEmulator,
    parse_latency,
    serve,
)
from nanobanana_async.models import BASE_SIZES, EXTENDED_SIZES, MODELS
from nanobanana_async.pricing import DEFAULT_PRICES

BASE = "https://api.nanobananaapi.dev"
GENERATE = "/v1/images/generate"
KEY = "sk-emulator-test-0123456789"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLASH = "gemini-3.1-flash-image-preview"

anyio_test = pytest.mark.anyio


@asynccontextmanager
async def client_for(
    emulator: Emulator, key: str | None = KEY, base_url: str = BASE
) -> AsyncIterator[httpx.AsyncClient]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=base_url, headers=headers
    ) as client:
        yield client


async def generate(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post(GENERATE, json={"prompt": "a yellow banana", **body})


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and decompressed scanlines, checking every CRC on the way."""
    assert data[:8] == PNG_MAGIC
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


# -- success -----------------------------------------------------------------------------------


@anyio_test
async def test_one_image_is_a_string_url_and_is_charged() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with client_for(emulator) as client:
        response = await generate(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == 0
    assert body["message"] == "ok"
    url = body["data"]["url"]
    assert isinstance(url, str)
    assert url.startswith(f"{BASE}/images/")
    assert url.endswith(".png")
    price = DEFAULT_PRICES["gemini-2.5-flash-image"]
    assert emulator.balance(KEY) == 100 - price
    stats = emulator.stats
    assert (stats.requests, stats.generate_requests, stats.generations) == (1, 1, 1)
    assert (stats.images_generated, stats.credits_charged) == (1, price)
    assert stats.by_status == {200: 1}
    assert len(stats.request_start_times) == 1


@anyio_test
async def test_several_images_are_a_list_of_distinct_urls() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with client_for(emulator) as client:
        response = await generate(client, num=3, model=FLASH, image_size="21:9")
    urls = response.json()["data"]["url"]
    assert isinstance(urls, list)
    assert len(set(urls)) == 3
    assert emulator.balance(KEY) == 100 - 3 * DEFAULT_PRICES[FLASH]
    assert emulator.stats.images_generated == 3
    assert emulator.stats.generations == 1


@anyio_test
async def test_each_generation_gets_its_own_urls() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        first = (await generate(client)).json()["data"]["url"]
        second = (await generate(client)).json()["data"]["url"]
    assert first != second


@anyio_test
async def test_every_model_and_its_sizes_are_accepted() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        for model in MODELS:
            sizes = BASE_SIZES + (EXTENDED_SIZES if model.startswith("gemini-3.1-flash") else ())
            for size in sizes:
                response = await generate(client, model=model, image_size=size)
                assert response.json()["code"] == 0, (model, size)
    assert emulator.stats.credits_charged == sum(
        DEFAULT_PRICES[m] * (14 if m.startswith("gemini-3.1-flash") else 9) for m in MODELS
    )


# -- validation, auth, credits -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "JSON"),
        (b'{"prompt": "x"', "JSON"),
        (b"[1, 2]", "object"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"{}", "prompt"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": "   "}', "prompt"),
        (b'{"prompt": 42}', "prompt"),
        (b'{"prompt": null}', "prompt"),
        (b'{"prompt": "x", "num": 0}', "num"),
        (b'{"prompt": "x", "num": 11}', "num"),
        (b'{"prompt": "x", "num": "2"}', "num"),
        (b'{"prompt": "x", "num": 1.5}', "num"),
        (b'{"prompt": "x", "num": true}', "num"),
        (b'{"prompt": "x", "model": "gemini-9"}', "model"),
        (b'{"prompt": "x", "model": ["gemini-2.5-flash-image"]}', "model"),
        (b'{"prompt": "x", "image_size": "7:7"}', "image_size"),
        (b'{"prompt": "x", "image_size": "21:9"}', "image_size"),
        (
            b'{"prompt": "x", "model": "gemini-3-pro-image-preview", "image_size": "1:8"}',
            "image_size",
        ),
    ],
)
@anyio_test
async def test_invalid_requests_are_400_and_free(body: bytes, needle: str) -> None:
    emulator = Emulator(keys={KEY: 100})
    async with client_for(emulator) as client:
        response = await client.post(GENERATE, content=body)
    assert response.status_code == 400
    data = response.json()
    assert data["code"] == 400
    assert needle in data["message"]
    assert emulator.balance(KEY) == 100
    assert emulator.stats.generations == 0
    assert emulator.stats.by_status == {400: 1}


@anyio_test
async def test_max_num_is_configurable() -> None:
    emulator = Emulator(max_num=2)
    async with client_for(emulator) as client:
        assert (await generate(client, num=2)).status_code == 200
        refused = await generate(client, num=3)
    assert refused.status_code == 400
    assert "between 1 and 2" in refused.json()["message"]


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer    ", "Basic abc", KEY, "Bearer sk-other"]
)
@anyio_test
async def test_bad_or_unknown_keys_are_401(authorization: str | None) -> None:
    emulator = Emulator(keys={KEY: 100})
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client_for(emulator, key=None) as client:
        response = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "invalid API key"}
    assert emulator.stats.credits_charged == 0


@anyio_test
async def test_auth_comes_before_validation() -> None:
    async with client_for(Emulator(keys={KEY: 1}), key="wrong") as client:
        response = await client.post(GENERATE, content=b"not json")
    assert response.status_code == 401


@anyio_test
async def test_without_keys_any_key_works_and_has_its_own_ledger() -> None:
    emulator = Emulator(default_credits=10)
    async with client_for(emulator, key="alice") as alice, client_for(emulator, key="bob") as bob:
        assert (await generate(alice, num=2)).status_code == 200
        assert (await generate(bob)).status_code == 200
    assert emulator.balance("alice") == 6
    assert emulator.balance("bob") == 8
    assert emulator.balance("carol") == 10  # a key not seen yet starts full


@anyio_test
async def test_insufficient_credits_and_ledger_arithmetic() -> None:
    emulator = Emulator(keys={KEY: 10, "sk-other": 5})
    async with client_for(emulator) as client:
        assert (await generate(client, num=3)).status_code == 200  # 6
        assert emulator.balance(KEY) == 4
        refused = await generate(client, num=3)
        assert refused.status_code == 400
        assert refused.json() == {"code": 400, "message": "insufficient credits"}
        assert emulator.balance(KEY) == 4
        assert (await generate(client, num=2)).status_code == 200
        assert emulator.balance(KEY) == 0
        assert (await generate(client)).json()["message"] == "insufficient credits"
        emulator.set_balance(KEY, 2)
        assert (await generate(client)).status_code == 200
    assert emulator.balance(KEY) == 0
    assert emulator.balance("sk-other") == 5
    assert emulator.stats.credits_charged == 12
    assert emulator.stats.generations == 3
    assert emulator.stats.by_status == {200: 3, 400: 2}
    with pytest.raises(KeyError):
        emulator.balance("sk-unknown")


@anyio_test
async def test_set_balance_adds_a_key() -> None:
    emulator = Emulator(keys={})
    async with client_for(emulator) as client:
        assert (await generate(client)).status_code == 401
        emulator.set_balance(KEY, 3)
        assert (await generate(client)).status_code == 200
    assert emulator.balance(KEY) == 1
    with pytest.raises(ValueError, match="credits"):
        emulator.set_balance(KEY, -1)
    with pytest.raises(ValueError, match="key"):
        emulator.set_balance(" ", 1)


@anyio_test
async def test_custom_prices_decide_models_and_sizes() -> None:
    emulator = Emulator(prices={"house-model": 3, "gemini-3.1-flash-next": 1})
    async with client_for(emulator) as client:
        assert (await generate(client, model="house-model", image_size="16:9")).status_code == 200
        assert (await generate(client, model="house-model", image_size="1:8")).status_code == 400
        ok = await generate(client, model="gemini-3.1-flash-next", image_size="1:8", num=2)
        assert ok.status_code == 200
        # The default model is not in this table.
        assert "model" in (await generate(client)).json()["message"]
    assert emulator.stats.credits_charged == 3 + 2


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="max_num"):
        Emulator(max_num=0)
    with pytest.raises(ValueError, match="default_credits"):
        Emulator(default_credits=-1)
    with pytest.raises(ValueError, match="price"):
        Emulator(prices={"m": -2})
    with pytest.raises(ValueError, match="credits"):
        Emulator(keys={KEY: -5})


@anyio_test
async def test_errors_as_http_200() -> None:
    emulator = Emulator(keys={KEY: 2}, errors_as_http_200=True)
    async with client_for(emulator) as client:
        bad = await generate(client, num=0)
        ok = await generate(client)
        broke = await generate(client)
        async with client_for(emulator, key="nope") as stranger:
            denied = await generate(stranger)
        missing = await client.get("/v2/nothing")
    assert ok.status_code == 200
    assert ok.json()["code"] == 0
    for response, code in ((bad, 400), (broke, 400), (denied, 401)):
        assert response.status_code == 200
        assert response.json()["code"] == code
    assert missing.status_code == 404  # not the API speaking


# -- faults ------------------------------------------------------------------------------------


@anyio_test
async def test_json_server_errors() -> None:
    emulator = Emulator(faults=Faults(server_error_rate=1.0, html_error_share=0.0))
    async with client_for(emulator) as client:
        responses = [await generate(client) for _ in range(5)]
    for response in responses:
        assert response.status_code == 500
        assert response.json() == {"code": 500, "message": "server error"}
    assert emulator.stats.faults["server_error_json"] == 5
    assert emulator.stats.credits_charged == 0
    assert emulator.stats.generations == 0


@anyio_test
async def test_non_json_server_errors() -> None:
    emulator = Emulator(faults=Faults(server_error_rate=1.0, html_error_share=1.0), seed=3)
    async with client_for(emulator) as client:
        responses = [await generate(client) for _ in range(30)]
    statuses = {r.status_code for r in responses}
    assert statuses == {502, 503}
    for response in responses:
        if response.status_code == 502:
            assert response.headers["content-type"].startswith("text/html")
            assert b"502 Bad Gateway" in response.content
        else:
            assert response.content == b""
    assert emulator.stats.faults["server_error_html"] == 30
    assert emulator.stats.by_status[502] + emulator.stats.by_status[503] == 30


@anyio_test
async def test_errors_as_http_200_leaves_non_json_errors_alone() -> None:
    faults = Faults(server_error_rate=1.0, html_error_share=1.0)
    emulator = Emulator(faults=faults, errors_as_http_200=True)
    async with client_for(emulator) as client:
        assert (await generate(client)).status_code in (502, 503)


@pytest.mark.parametrize(("retry_after", "seconds", "ms"), [(1.5, "2", "1500"), (0.01, "1", "10")])
@anyio_test
async def test_rate_limited(retry_after: float, seconds: str, ms: str) -> None:
    emulator = Emulator(faults=Faults(rate_limit_rate=1.0, retry_after=retry_after))
    async with client_for(emulator) as client:
        response = await generate(client)
    assert response.status_code == 429
    assert response.json()["code"] == 429
    assert response.headers["retry-after"] == seconds
    assert response.headers["retry-after-ms"] == ms
    assert emulator.stats.faults["rate_limited"] == 1
    assert emulator.stats.credits_charged == 0


@anyio_test
async def test_drop_before_charge() -> None:
    emulator = Emulator(keys={KEY: 10}, faults=Faults(drop_rate=1.0, drop_after_charge_share=0.0))
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await generate(client)
    assert emulator.balance(KEY) == 10
    assert emulator.stats.faults["dropped_before_charge"] == 1
    assert emulator.stats.by_status == {}
    assert emulator.stats.in_flight == 0


@anyio_test
async def test_drop_after_charge() -> None:
    emulator = Emulator(keys={KEY: 10}, faults=Faults(drop_rate=1.0, drop_after_charge_share=1.0))
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await generate(client, num=2)
    assert emulator.balance(KEY) == 6
    stats = emulator.stats
    assert stats.faults["dropped_after_charge"] == 1
    assert stats.credits_charged == 4
    assert (stats.generations, stats.images_generated) == (0, 0)  # nobody got an answer
    assert stats.by_status == {}
    assert stats.in_flight == 0


@anyio_test
async def test_a_drop_planned_after_a_refusal_charges_nothing() -> None:
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0)
    emulator = Emulator(keys={KEY: 10}, faults=faults)
    async with client_for(emulator, key="wrong") as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await generate(client)
    assert emulator.stats.faults["dropped_before_charge"] == 1
    assert emulator.stats.faults["dropped_after_charge"] == 0
    assert emulator.balance(KEY) == 10


async def outcomes(emulator: Emulator, count: int) -> list[str]:
    seen = []
    async with client_for(emulator) as client:
        for _ in range(count):
            try:
                response = await generate(client)
            except httpx.RemoteProtocolError:
                seen.append("drop")
            else:
                seen.append(str(response.status_code))
    return seen


@anyio_test
async def test_faults_are_deterministic_for_a_seed() -> None:
    faults = Faults(server_error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.2)
    first = await outcomes(Emulator(faults=faults, seed=11), 60)
    again = await outcomes(Emulator(faults=faults, seed=11), 60)
    other = await outcomes(Emulator(faults=faults, seed=12), 60)
    assert first == again
    assert first != other
    assert {"200", "429", "drop", "500"} <= set(first)
    # Turning latency on does not change which requests fail.
    slow = Faults(server_error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.2, latency=(0, 0.001))
    assert await outcomes(Emulator(faults=slow, seed=11), 60) == first


@anyio_test
async def test_fault_shares_are_roughly_right() -> None:
    emulator = Emulator(faults=Faults(server_error_rate=0.25, rate_limit_rate=0.1), seed=5)
    seen = await outcomes(emulator, 800)
    assert 150 < sum(s in ("500", "502", "503") for s in seen) < 250
    assert 50 < seen.count("429") < 110
    counted = sum(emulator.stats.faults.values())
    assert counted == sum(s != "200" for s in seen)


@anyio_test
async def test_faults_can_be_changed_mid_test() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        assert (await generate(client)).status_code == 200
        emulator.faults = Faults(server_error_rate=1.0, html_error_share=0.0)
        assert (await generate(client)).status_code == 500
        emulator.faults = Faults()
        assert (await generate(client)).status_code == 200


def test_faults_are_validated() -> None:
    for bad in (
        {"server_error_rate": 1.5},
        {"rate_limit_rate": -0.1},
        {"drop_rate": float("nan")},
        {"html_error_share": 2},
        {"server_error_rate": 0.6, "drop_rate": 0.6},
        {"retry_after": -1},
        {"latency": -0.1},
        {"latency": (0.3, 0.1)},
        {"latency": (0.1, float("inf"))},
        {"latency": "0.1"},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 -- one message per field
            Faults(**bad)
    assert Faults(latency=None).latency == 0.0
    assert Faults(latency=[0.1, 0.2]).latency == (0.1, 0.2)
    assert Faults(latency=1).latency == 1.0
    assert Faults(server_error_rate=0.5, rate_limit_rate=0.5).rate_limit_rate == 0.5


@pytest.mark.parametrize(
    ("text", "expected"), [("0.1", 0.1), (" 2 ", 2.0), ("0.05-0.2", (0.05, 0.2)), ("0-0", (0, 0))]
)
def test_parse_latency(text: str, expected: float | tuple[float, float]) -> None:
    assert parse_latency(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-1", "0.2-0.1", "1-2-3", "nan", "inf", "0.1-"])
def test_parse_latency_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"seconds|low to high"):
        parse_latency(text)


# -- latency and concurrency -------------------------------------------------------------------


@anyio_test
async def test_fixed_latency() -> None:
    emulator = Emulator(faults=Faults(latency=0.2))
    async with client_for(emulator) as client:
        start = anyio.current_time()
        response = await generate(client)
        elapsed = anyio.current_time() - start
    assert response.status_code == 200
    assert 0.18 <= elapsed < 2.0


@anyio_test
async def test_latency_range() -> None:
    emulator = Emulator(faults=Faults(latency=(0.05, 0.1)))
    async with client_for(emulator) as client:
        start = anyio.current_time()
        for _ in range(3):
            await generate(client)
        elapsed = anyio.current_time() - start
    assert 0.14 <= elapsed < 2.0


@anyio_test
async def test_in_flight_counts_concurrent_requests() -> None:
    emulator = Emulator(faults=Faults(latency=0.3))
    async with client_for(emulator) as client, anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(generate, client)
        await anyio.sleep(0.1)
        assert emulator.stats.in_flight == 5
    assert emulator.stats.in_flight == 0
    assert emulator.stats.max_in_flight == 5
    assert emulator.stats.generations == 5


@anyio_test
async def test_a_client_that_gives_up_is_not_charged() -> None:
    emulator = Emulator(keys={KEY: 10}, faults=Faults(latency=5.0))
    async with client_for(emulator) as client:
        start = anyio.current_time()
        with anyio.move_on_after(0.1):
            await generate(client)
        assert anyio.current_time() - start < 1.0
    assert emulator.stats.in_flight == 0
    assert emulator.balance(KEY) == 10
    assert emulator.stats.generate_requests == 1


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
async def test_wrong_methods_are_404() -> None:
    async with client_for(Emulator()) as client:
        assert (await client.get(GENERATE)).status_code == 404
        assert (await client.post("/_emulator/stats")).status_code == 404
        url = (await generate(client)).json()["data"]["url"]
        assert (await client.delete(url)).status_code == 404
        head = await client.head(url)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0


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


# -- idempotency -------------------------------------------------------------------------------


@anyio_test
async def test_repeated_idempotency_key_is_charged_again_by_default() -> None:
    emulator = Emulator(keys={KEY: 100})
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        first = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        second = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        other = await client.post(
            GENERATE, json={"prompt": "x"}, headers={"Idempotency-Key": "job-2"}
        )
        await generate(client)  # no key: not tracked
    assert first.json()["data"]["url"] != second.json()["data"]["url"]
    assert other.status_code == 200
    assert emulator.stats.charged_idempotency_keys == {"job-1": 2, "job-2": 1}
    assert emulator.stats.duplicate_charges == 1
    assert emulator.balance(KEY) == 100 - 4 * 2


@anyio_test
async def test_honour_idempotency_replays_without_charging() -> None:
    emulator = Emulator(keys={KEY: 100, "sk-other-account": 100}, honour_idempotency=True)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        first = await client.post(GENERATE, json={"prompt": "x", "num": 2}, headers=headers)
        again = await client.post(GENERATE, json={"prompt": "x", "num": 2}, headers=headers)
        changed = await client.post(GENERATE, json={"prompt": "y", "num": 2}, headers=headers)
        async with client_for(emulator, key="sk-other-account") as other:
            elsewhere = await other.post(GENERATE, json={"prompt": "x", "num": 2}, headers=headers)
    assert again.content == first.content
    assert changed.status_code == 400
    assert "Idempotency-Key" in changed.json()["message"]
    assert elsewhere.status_code == 200
    assert elsewhere.content != first.content  # keys are scoped to an account
    assert emulator.balance(KEY) == 96
    stats = emulator.stats
    assert stats.idempotent_replays == 1
    assert stats.generations == 2
    assert stats.duplicate_charges == 1  # "job-1" was charged once on each account
    assert stats.charged_idempotency_keys == {"job-1": 2}


@anyio_test
async def test_honour_idempotency_makes_a_retry_after_a_drop_free() -> None:
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults, honour_idempotency=True)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        emulator.faults = Faults()
        retry = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert retry.json()["code"] == 0
    assert emulator.balance(KEY) == 98
    assert emulator.stats.charged_idempotency_keys == {"job-1": 1}
    assert emulator.stats.duplicate_charges == 0


@anyio_test
async def test_without_honour_a_retry_after_a_drop_pays_twice() -> None:
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        emulator.faults = Faults()
        await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert emulator.stats.duplicate_charges == 1
    assert emulator.balance(KEY) == 96


# -- counters ----------------------------------------------------------------------------------


@anyio_test
async def test_stats_endpoint_matches_the_counters() -> None:
    emulator = Emulator(faults=Faults(rate_limit_rate=0.5), seed=2)
    async with client_for(emulator) as client:
        for _ in range(6):
            await generate(client, num=2)
        await client.get("/nowhere")
        response = await client.get("/_emulator/stats")
    data = response.json()
    assert response.status_code == 200
    snapshot = emulator.stats.to_dict()
    snapshot["by_status"]["200"] -= 1  # the stats response itself
    assert data == snapshot
    assert data["requests"] == 8
    assert data["generate_requests"] == 6
    assert set(data["faults"]) == set(FAULT_KINDS)
    assert sum(data["by_status"].values()) == 7
    assert data["images_generated"] == 2 * data["generations"]


def test_stats_defaults() -> None:
    stats = EmulatorStats()
    assert stats.faults == dict.fromkeys(FAULT_KINDS, 0)
    assert stats.to_dict()["by_status"] == {}


@anyio_test
async def test_reset_stats() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        await generate(client)
        emulator.reset_stats()
        assert emulator.stats.requests == 0
        await generate(client)
    assert emulator.stats.generations == 1


def test_request_start_times_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator_module, "MAX_REQUEST_START_TIMES", 3)
    emulator = Emulator()

    async def main() -> None:
        async with client_for(emulator) as client:
            for _ in range(5):
                await generate(client)

    anyio.run(main)
    assert len(emulator.stats.request_start_times) == 3
    assert emulator.stats.generate_requests == 5
    times = emulator.stats.request_start_times
    assert times == sorted(times)


@anyio_test
async def test_lifespan_is_supported() -> None:
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await Emulator()({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- over a real socket ------------------------------------------------------------------------


def test_serve_over_a_socket(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("uvicorn")
    caplog.set_level(logging.INFO)
    emulator = Emulator(keys={KEY: 100}, seed=1)
    auth = {"Authorization": f"Bearer {KEY}"}
    with serve(emulator) as server, httpx.Client(base_url=server.base_url) as client:
        assert isinstance(server, RunningEmulator)
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        response = client.post(GENERATE, json={"prompt": "x", "num": 2}, headers=auth)
        assert response.status_code == 200
        urls = response.json()["data"]["url"]
        assert all(url.startswith(server.base_url) for url in urls)
        assert parse_png(client.get(urls[0]).content)[:2] == (256, 256)
        assert client.get("/_emulator/stats").json()["generations"] == 1

        emulator.faults = Faults(drop_rate=1.0, drop_after_charge_share=0.5)
        for _ in range(4):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post(GENERATE, json={"prompt": "x"}, headers=auth)
        emulator.faults = Faults()
        # The connection pool recovers: the next request works.
        assert client.post(GENERATE, json={"prompt": "y"}, headers=auth).status_code == 200
    drops = emulator.stats.faults
    assert drops["dropped_before_charge"] + drops["dropped_after_charge"] == 4
    assert emulator.balance(KEY) == 100 - 2 * (3 + drops["dropped_after_charge"])
    # Deliberate drops are not logged as application errors.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_stopping_does_not_wait_for_slow_requests() -> None:
    pytest.importorskip("uvicorn")
    emulator = Emulator(faults=Faults(latency=30.0))
    result: list[httpx.Response] = []

    def slow_request(base_url: str) -> None:
        result.append(
            httpx.post(
                f"{base_url}{GENERATE}",
                json={"prompt": "x"},
                headers={"Authorization": "Bearer k"},
                timeout=20,
            )
        )

    with serve(emulator) as server:
        thread = threading.Thread(target=slow_request, args=(server.base_url,))
        thread.start()
        deadline = time.monotonic() + 10
        while emulator.stats.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.stats.in_flight == 1
        start = time.monotonic()
    assert time.monotonic() - start < 3.0
    thread.join(5)
    assert result[0].status_code == 503
    assert emulator.stats.credits_charged == 0
    assert emulator.stats.in_flight == 0


def test_serve_refuses_a_taken_port() -> None:
    pytest.importorskip("uvicorn")
    with serve() as first, pytest.raises(OSError, match="in use"), serve(port=first.port):
        pass


def test_serve_without_uvicorn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ModuleNotFoundError, match=r"nanobanana-async\[emulator\]"), serve():
        pass


def test_module_runs_in_the_foreground_until_interrupted() -> None:
    pytest.importorskip("uvicorn")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanobanana_async.emulator", "--port", "0", "--credits", "4",
         "--latency", "0.01-0.02", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        auth = {"Authorization": "Bearer anything"}
        with httpx.Client(base_url=base_url, headers=auth) as client:
            assert client.post(GENERATE, json={"prompt": "x", "num": 2}).status_code == 200
            broke = client.post(GENERATE, json={"prompt": "x"})
            assert broke.json()["message"] == "insufficient credits"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err == ""


def test_module_refuses_bad_options() -> None:
    for args in (
        ["--latency", "slow"],
        ["--fail-rate", "2"],
        ["--fail-rate", "0.6", "--drop-rate", "0.6"],
    ):
        with pytest.raises(SystemExit) as info:
            emulator_module.main(args)
        assert info.value.code == 2
