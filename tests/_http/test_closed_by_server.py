"""A server that closes after every response, without saying so, fails no call (issue 11, 14).

The emulator is served behind its wire-fault proxy, which closes each connection right after
the response, with no ``Connection: close`` (the FIN leaves with the response's last bytes).
A pool that hands out such a connection again sends the next request on a closed socket and
fails it after sending: a false "may have been charged". Every path must check the idle
socket before reuse: the SDK's h11 pool and httpx's own (httpcore).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from nanobanana_async import AsyncNanoBanana
from nanobanana_async._http.fast import FastTransport
from nanobanana_async.emulator import Emulator, WireFaults, serve

pytestmark = pytest.mark.anyio

KEY = "nb-closing-0123456789abcdef"
SEQUENTIAL = 40
CONCURRENT = 80

TRANSPORTS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "httpx": lambda: httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
    ),
    "fast": FastTransport,
}


@pytest.mark.parametrize("name", list(TRANSPORTS))
async def test_a_server_closing_after_every_response_fails_no_call(
    anyio_backend: str, name: str
) -> None:
    emulator = Emulator(keys={KEY: 10_000}, seed=1)
    with serve(emulator, wire=WireFaults(close_after_response_rate=1.0, seed=1)) as running:
        async with AsyncNanoBanana(
            KEY, base_url=running.base_url, transport=TRANSPORTS[name](), max_retries=0
        ) as client:
            for i in range(SEQUENTIAL):
                generation = await client.generate(f"one at a time {i}")
                assert len(generation.urls) == 1
            report = await client.run_batch(
                [f"side by side {i}" for i in range(CONCURRENT)], concurrency=8
            )
            assert report.failed == 0
            assert report.succeeded == CONCURRENT
    calls = SEQUENTIAL + CONCURRENT
    assert emulator.stats.generate_requests == calls  # nothing failed and nothing was retried
    assert running.wire is not None
    assert running.wire.closed_after_response == running.wire.responses == calls
    assert running.wire.connections == calls  # every call found its connection closed


@pytest.mark.parametrize("name", list(TRANSPORTS))
async def test_a_server_closing_half_the_time_fails_no_call(anyio_backend: str, name: str) -> None:
    # Reused and closed connections mixed: the check must not drop the good ones either.
    emulator = Emulator(keys={KEY: 10_000}, seed=2)
    with serve(emulator, wire=WireFaults(close_after_response_rate=0.5, seed=2)) as running:
        async with AsyncNanoBanana(
            KEY, base_url=running.base_url, transport=TRANSPORTS[name](), max_retries=0
        ) as client:
            for i in range(SEQUENTIAL):
                await client.generate(f"one at a time {i}")
    assert running.wire is not None
    closed = running.wire.closed_after_response
    assert 0 < closed < SEQUENTIAL
    # One connection to start with, then one more after each close but maybe the last.
    assert running.wire.connections in (closed, closed + 1)


# The SDK's own transport only: httpcore pools stray bytes (finding 9).
async def test_every_wire_fault_at_once_fails_no_call(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 10_000}, seed=3)
    faults = WireFaults(stray_bytes_rate=0.5, close_after_response_rate=0.5, seed=3)
    with serve(emulator, wire=faults) as running:
        async with AsyncNanoBanana(
            KEY, base_url=running.base_url, transport=FastTransport(), max_retries=0
        ) as client:
            for i in range(SEQUENTIAL):
                await client.generate(f"one at a time {i}")
            report = await client.run_batch(
                [f"side by side {i}" for i in range(CONCURRENT)], concurrency=8
            )
            assert report.succeeded == CONCURRENT
    assert running.wire is not None
    assert running.wire.stray_bytes_sent > 0
    assert running.wire.closed_after_response > 0
    assert emulator.stats.generate_requests == SEQUENTIAL + CONCURRENT
