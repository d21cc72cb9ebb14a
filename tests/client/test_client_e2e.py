"""AsyncNanoBanana end to end over a real loopback socket, against the emulator under uvicorn."""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import httpx
import pytest

from nanobanana_async import (
    DEFAULT_PRICING,
    APIConnectionError,
    APITimeoutError,
    AsyncNanoBanana,
    AuthenticationError,
    InsufficientCreditsError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from nanobanana_async.emulator import Emulator, Faults, serve

pytestmark = pytest.mark.anyio

KEY = "sk-e2e-0123456789abcdefghij"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextmanager
def running(emulator: Emulator) -> Iterator[str]:
    with serve(emulator, "127.0.0.1", 0) as server:
        yield str(server.base_url).rstrip("/")


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(keys={KEY: 100_000}, seed=1)


@pytest.fixture
def base_url(emulator: Emulator) -> Iterator[str]:
    with running(emulator) as url:
        yield url


def names(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


async def test_generate_one_image_and_download_it(
    emulator: Emulator, base_url: str, tmp_path: pathlib.Path
) -> None:
    async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=FAST) as client:
        generation = await client.generate("a yellow banana", image_size="16:9")
        assert len(generation.urls) == 1
        path = await client.download(generation.urls[0], tmp_path / "banana.png")
    data = path.read_bytes()
    width, height = png_size(data)
    assert abs(width / height - 16 / 9) < 0.05
    assert names(tmp_path) == ["banana.png"]
    assert emulator.stats.generate_requests == 1
    assert emulator.stats.generations == 1
    assert emulator.stats.credits_charged == generation.credits
    assert generation.credits == DEFAULT_PRICING[generation.model]


async def test_generate_several_images(
    emulator: Emulator, base_url: str, tmp_path: pathlib.Path
) -> None:
    model = "gemini-3.1-flash-image-preview"
    async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=FAST) as client:
        generation = await client.generate("three pears", model=model, image_size="21:9", num=3)
        assert isinstance(generation.urls, tuple)
        assert len(generation.urls) == 3
        assert len(set(generation.urls)) == 3
        paths = [
            await client.download(url, tmp_path / f"{i}.png")
            for i, url in enumerate(generation.urls)
        ]
    for path in paths:
        width, height = png_size(path.read_bytes())
        assert abs(width / height - 21 / 9) < 0.05
    assert generation.credits == DEFAULT_PRICING[model] * 3
    assert emulator.stats.credits_charged == generation.credits
    assert emulator.stats.generate_requests == 1


@pytest.mark.parametrize("as_http_200", [False, True])
async def test_wrong_key_is_an_authentication_error(as_http_200: bool) -> None:
    emulator = Emulator(keys={KEY: 100}, errors_as_http_200=as_http_200, seed=1)
    wrong = "sk-wrong-9876543210zyxwvuts"
    with running(emulator) as base_url:
        async with AsyncNanoBanana(wrong, base_url=base_url, retry_policy=FAST) as client:
            with pytest.raises(AuthenticationError) as info:
                await client.generate("x")
    assert info.value.code == 401
    assert info.value.status_code == (200 if as_http_200 else 401)
    assert wrong not in str(info.value)
    # Never retried.
    assert emulator.stats.generate_requests == 1
    assert emulator.stats.credits_charged == 0
    assert emulator.balance(KEY) == 100


async def test_insufficient_credits_is_not_retried() -> None:
    emulator = Emulator(keys={KEY: 3}, seed=1)
    with running(emulator) as base_url:
        async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=FAST) as client:
            await client.generate("x")  # 2 credits
            with pytest.raises(InsufficientCreditsError):
                await client.generate("y")
    assert emulator.stats.generate_requests == 2
    assert emulator.balance(KEY) == 1


async def test_server_errors_then_success() -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=Faults(server_error_rate=0.5), seed=7)
    with running(emulator) as base_url:
        async with AsyncNanoBanana(
            KEY, base_url=base_url, retry_policy=FAST, max_retries=20
        ) as client:
            generations = [await client.generate(f"prompt {i}") for i in range(12)]
    assert all(len(g.urls) == 1 for g in generations)
    stats = emulator.stats
    assert stats.generations == 12
    # Some attempts failed and were retried, and failures cost nothing.
    assert stats.generate_requests > 12
    assert stats.credits_charged == sum(g.credits for g in generations)


async def test_dead_server_fails_with_server_error() -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=Faults(server_error_rate=1.0), seed=3)
    with running(emulator) as base_url:
        async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=FAST) as client:
            with pytest.raises(ServerError):
                await client.generate("x")
    assert emulator.stats.generate_requests == FAST.max_retries + 1
    assert emulator.stats.credits_charged == 0


async def test_image_on_another_origin_gets_no_authorization(tmp_path: pathlib.Path) -> None:
    emulator = Emulator(keys={KEY: 100_000}, seed=1)
    with running(emulator) as base_url:
        # The same server reached under another host name is another origin.
        api_url = base_url.replace("127.0.0.1", "localhost")
        async with AsyncNanoBanana(KEY, base_url=api_url, retry_policy=FAST) as client:
            generation = await client.generate("x")
            url = httpx.URL(generation.urls[0])
            other = str(url.copy_with(host="127.0.0.1"))
            same = str(url.copy_with(host="localhost"))
            await client.download(other, tmp_path / "other.png")
            assert emulator.stats.image_requests_with_authorization == 0
            await client.download(same, tmp_path / "same.png")
            assert emulator.stats.image_requests_with_authorization == 1


async def test_read_timeout_is_not_retried() -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=Faults(latency=2.0), seed=1)
    with running(emulator) as base_url:
        timeout = httpx.Timeout(5.0, read=0.2)
        async with AsyncNanoBanana(
            KEY, base_url=base_url, retry_policy=FAST, timeout=timeout
        ) as client:
            with pytest.raises(APITimeoutError) as info:
                await client.generate("x")
    assert info.value.may_have_been_charged is True
    assert emulator.stats.generate_requests == 1


async def test_cancel_while_the_server_works() -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=Faults(latency=2.0), seed=1)
    with running(emulator) as base_url:
        async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=FAST) as client:
            start = anyio.current_time()
            with anyio.move_on_after(0.3):
                await client.generate("x")
            elapsed = anyio.current_time() - start
    assert elapsed < 1.0
    assert emulator.stats.generate_requests == 1


async def test_rate_limits_are_waited_out() -> None:
    emulator = Emulator(
        keys={KEY: 100_000}, faults=Faults(rate_limit_rate=0.4, retry_after=0.2), seed=5
    )
    with running(emulator) as base_url:
        async with AsyncNanoBanana(
            KEY, base_url=base_url, retry_policy=FAST, max_retries=10
        ) as client:
            start = anyio.current_time()
            for i in range(6):
                await client.generate(f"prompt {i}")
            elapsed = anyio.current_time() - start
    limited = emulator.stats.faults["rate_limited"]
    assert limited >= 1
    assert emulator.stats.generations == 6
    # retry-after-ms (200) is preferred over the rounded-up Retry-After (1 s).
    assert 0.19 * limited <= elapsed < 0.2 * limited + 2.0


async def test_retry_after_beyond_the_cap_over_the_wire() -> None:
    emulator = Emulator(
        keys={KEY: 100_000}, faults=Faults(rate_limit_rate=1.0, retry_after=120.0), seed=1
    )
    policy = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_retry_after=10.0)
    with running(emulator) as base_url:
        async with AsyncNanoBanana(KEY, base_url=base_url, retry_policy=policy) as client:
            start = anyio.current_time()
            with pytest.raises(RateLimitError) as info:
                await client.generate("x")
            assert anyio.current_time() - start < 1.0
    assert info.value.retry_after == 120.0
    assert emulator.stats.generate_requests == 1


async def test_dropped_connection_is_not_retried_by_default() -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=Faults(drop_rate=1.0), seed=1)
    with running(emulator) as base_url:
        async with AsyncNanoBanana(
            KEY, base_url=base_url, retry_policy=FAST, max_retries=5
        ) as client:
            with pytest.raises(APIConnectionError) as info:
                await client.generate("x")
    assert info.value.may_have_been_charged is True
    assert "retry_ambiguous" in str(info.value)
    assert emulator.stats.generate_requests == 1


async def test_dropped_connections_retried_on_request_with_one_key_per_call() -> None:
    emulator = Emulator(
        keys={KEY: 100_000},
        faults=Faults(drop_rate=0.4),
        honour_idempotency=True,
        seed=11,
    )
    with running(emulator) as base_url:
        async with AsyncNanoBanana(
            KEY, base_url=base_url, retry_policy=FAST, max_retries=20, retry_ambiguous=True
        ) as client:
            generations = [await client.generate(f"prompt {i}") for i in range(10)]
    stats = emulator.stats
    assert all(len(g.urls) == 1 for g in generations)
    assert stats.faults["dropped_after_charge"] >= 1
    assert stats.generate_requests > 10
    # Every call used one key on all its attempts: a retry after a drop that followed the
    # charge was answered from the emulator's memory of that key, not charged again.
    assert len(stats.charged_idempotency_keys) == 10
    assert set(stats.charged_idempotency_keys.values()) == {1}
    assert stats.duplicate_charges == 0
    # (A replay can be dropped in turn, so there may be more replays than charged drops.)
    assert stats.idempotent_replays >= stats.faults["dropped_after_charge"]
    assert stats.credits_charged == sum(g.credits for g in generations)
