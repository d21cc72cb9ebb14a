"""Batch runner limits: request rate, memory with a huge input, the bounded result buffer,
and stopping (break, cancellation) with a consistent journal.

Every test runs on asyncio and Trio. The figures each test measures are printed (``-s``).
"""

from __future__ import annotations

import json
import pathlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.clients import FAST, emulated
from tests.support.pulls import Pulls, prompts

pytestmark = pytest.mark.anyio

KEY = "nb-limits-0123456789abcdefLIM"


def max_in_window(starts: list[float], window: float) -> int:
    """The most starts in any half-open window ``[t, t + window)``."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# -- request rate --------------------------------------------------------------------------------


def test_max_in_window_counts_a_sliding_window() -> None:
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_window([0.0, 1.0, 2.0], 1.0) == 1
    assert max_in_window([0.0, 0.0, 0.0], 1.0) == 3


async def test_max_per_second_holds_for_every_window_retries_included(anyio_backend: str) -> None:
    limit = 25
    emulator = Emulator(
        keys={KEY: 10**6}, faults=Faults(server_error_rate=0.25, latency=(0.0, 0.01)), seed=1
    )
    n = 50
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(
            [f"rated {i}" for i in range(n)], concurrency=16, max_per_second=limit
        )
    starts = emulator.stats.request_start_times
    assert report.retries > 0  # retries happened and are in ``starts`` too
    assert len(starts) == n + report.retries
    worst = max_in_window(starts, 1.0)
    print(f"\n[{anyio_backend}] max_per_second={limit}: {len(starts)} starts, worst window {worst}")
    assert worst <= limit
    # Not trivially satisfied: the limiter, not the work, set the pace.
    assert worst >= limit - 3
    assert max_in_window(starts, 2.0) <= 2 * limit
    # No burst: half a second holds about half the limit, not all of it.
    assert max_in_window(starts, 0.5) <= limit // 2 + 1


async def test_max_per_second_holds_where_the_server_measures_over_loopback(
    anyio_backend: str,
) -> None:
    # Over a socket, the first requests wait for fresh connections and arrive tens of
    # milliseconds late, later ones on warm connections do not: a limiter that lets a burst
    # through each second gets two bursts into one of the server's windows.
    pytest.importorskip("uvicorn")
    limit = 20
    emulator = Emulator(
        keys={KEY: 10**6},
        faults=Faults(server_error_rate=0.2, drop_rate=0.05, latency=(0.0, 0.03)),
        seed=8,
    )
    with serve(emulator, "127.0.0.1", 0) as server:
        async with AsyncNanoBanana(
            KEY, base_url=server.base_url, retry_policy=FAST, retry_ambiguous=True
        ) as client:
            report = await client.run_batch(
                [f"socket {i}" for i in range(45)], concurrency=16, max_per_second=limit
            )
    starts = emulator.stats.request_start_times
    worst = max_in_window(starts, 1.0)
    print(f"\n[{anyio_backend}] loopback max_per_second={limit}: worst window {worst}")
    assert report.retries > 0
    assert len(starts) == 45 + report.retries
    assert worst <= limit
    assert max_in_window(starts, 0.5) <= limit // 2 + 1


async def test_a_rate_below_one_per_second_spaces_every_start(anyio_backend: str) -> None:
    # 2.5/s: at most 2 starts in any second, never a burst of 3.
    emulator = Emulator(keys={KEY: 10**6}, seed=2)
    async with emulated(emulator, KEY) as client:
        await client.run_batch([f"slow {i}" for i in range(5)], concurrency=5, max_per_second=2.5)
    starts = emulator.stats.request_start_times
    assert len(starts) == 5
    assert max_in_window(starts, 1.0) == 2


# -- memory with a huge input, and the bounded result buffer -------------------------------------


async def test_a_million_prompt_generator_is_pulled_lazily(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 10**8}, seed=3)
    pulls = Pulls()
    concurrency = 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        async with emulated(emulator, KEY) as client:
            seen = 0
            async with client.batch(
                prompts(1_000_000, pulls, "prompt number"), concurrency=concurrency
            ) as run:
                async for result in run:
                    assert result.ok
                    seen += 1
                    if seen == 5:
                        break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\n[{anyio_backend}] 1M generator: pulled {pulls.pulled} for {seen} results, "
        f"tracemalloc peak {peak / 2**20:.2f} MiB"
    )
    # The workers' jobs, the output buffer (one per worker), the producer's: never the input.
    assert pulls.pulled <= seen + 2 * concurrency + 2
    assert emulator.stats.generate_requests <= seen + 2 * concurrency + 1
    assert peak < 20 * 2**20


@pytest.mark.parametrize("ordered", [False, True])
async def test_a_consumer_that_stops_reading_stops_dispatch(
    anyio_backend: str, ordered: bool
) -> None:
    emulator = Emulator(keys={KEY: 10**8}, seed=4)
    pulls = Pulls()
    concurrency = 4
    async with emulated(emulator, KEY) as client:
        run = client.batch(
            prompts(100_000, pulls, "prompt number"), concurrency=concurrency, ordered=ordered
        )
        async with run:
            seen = 0
            async for _ in run:
                seen += 1
                if seen == 3:
                    break
            # The loop is left but the run is still open: nobody reads, so nothing more is sent.
            await settle(lambda: pulls.pulled)
            stalled = pulls.pulled
            requests = emulator.stats.generate_requests
            await anyio.sleep(0.2)
            assert pulls.pulled == stalled
            assert emulator.stats.generate_requests == requests
    print(f"\n[{anyio_backend}] ordered={ordered}: pulled {stalled} with the consumer stopped")
    bound = 2 * concurrency + 2 if not ordered else 4 * concurrency + 2
    assert stalled <= seen + bound
    assert emulator.stats.in_flight == 0


async def settle(value: Any, quiet: float = 0.1, limit: float = 5.0) -> None:
    """Wait until ``value()`` stops changing for ``quiet`` seconds."""
    with anyio.move_on_after(limit):
        last = value()
        while True:
            await anyio.sleep(quiet)
            if value() == last:
                return
            last = value()


# -- stopping: break and cancellation ------------------------------------------------------------


def check_journal(path: pathlib.Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({r["id"] for r in records}) == len(records)
    assert all(r["status"] in ("succeeded", "failed", "skipped", "ambiguous") for r in records)
    # A job cancelled while it was being sent is journaled as may have been charged.
    assert all(r["credits_may_have_been_spent"] > 0 for r in records if r["status"] == "ambiguous")
    return records


async def wait_until_idle(emulator: Emulator) -> float:
    started = time.perf_counter()
    with anyio.fail_after(5.0):
        while emulator.stats.in_flight:  # noqa: ASYNC110 - polling another thread's counter
            await anyio.sleep(0.005)
    return time.perf_counter() - started


async def test_leaving_a_batch_s_block_stops_requests_in_flight_over_loopback(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("uvicorn")
    # Latencies up to 10 s: the first result comes quickly, most requests are still in flight
    # at the break, and only a disconnect ends them early.
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.05, 10.0)), seed=5)
    journal = tmp_path / "run.jsonl"
    pulls = Pulls()
    with serve(emulator, "127.0.0.1", 0) as server:
        async with AsyncNanoBanana(KEY, base_url=server.base_url, retry_policy=FAST) as client:
            jobs = prompts(500, pulls, "prompt number")
            async with client.batch(jobs, concurrency=16, journal=journal) as run:
                async for _ in run:
                    # On a loaded machine the first result can come before most requests have
                    # reached the server: break only once there is something in flight.
                    with anyio.fail_after(5.0):
                        while emulator.stats.in_flight < 8:  # noqa: ASYNC110 - another thread's
                            await anyio.sleep(0.005)
                    in_flight_at_break = emulator.stats.in_flight
                    requests_at_break = emulator.stats.generate_requests
                    broke = time.perf_counter()
                    break
            # Leaving the block cancelled the requests in flight and waited for the batch.
            await wait_until_idle(emulator)
            took = time.perf_counter() - broke
            # A request already on the wire at the break may be counted by the server (another
            # thread) a moment later: at most one per worker. After that, nothing more.
            await settle(lambda: emulator.stats.generate_requests)
            stopped = emulator.stats.generate_requests
            assert stopped - requests_at_break <= 16
            await anyio.sleep(0.3)
            assert emulator.stats.generate_requests == stopped
            generations = emulator.stats.generations
    print(
        f"\n[{anyio_backend}] break: {in_flight_at_break} in flight, idle after {took:.3f}s, "
        f"{generations} generations"
    )
    assert in_flight_at_break >= 8
    assert took < 5.0  # against up to 10 s of latency: they saw the disconnect
    assert generations <= requests_at_break - in_flight_at_break + 2
    records = check_journal(journal)
    succeeded = sum(r["status"] == "succeeded" for r in records)
    assert 1 <= succeeded <= generations
    assert pulls.pulled <= 16 + 16 + 2


async def test_cancelling_the_scope_around_a_batch_stops_it(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.05, 10.0)), seed=6)
    journal = tmp_path / "run.jsonl"
    async with emulated(emulator, KEY) as client:
        results = 0
        # ``run`` stays referenced: the cancellation itself, not the garbage collector, must
        # stop the work.
        run = client.batch([f"c{i}" for i in range(200)], concurrency=8, journal=journal)
        with anyio.CancelScope() as scope:
            async for _ in run:
                results += 1
                if results == 2:
                    scope.cancel()
        assert scope.cancelled_caught
        in_flight_at_cancel = emulator.stats.in_flight
        requests = emulator.stats.generate_requests
        took = await wait_until_idle(emulator)
        await anyio.sleep(0.2)
        assert emulator.stats.generate_requests == requests
        assert run.stats.in_flight == 0
        await run.aclose()
        with anyio.move_on_after(1.0) as timeout:
            await client.run_batch([f"r{i}" for i in range(50)], concurrency=8)
        assert timeout.cancelled_caught
        took_run_batch = await wait_until_idle(emulator)
    print(
        f"\n[{anyio_backend}] cancel: {in_flight_at_cancel} in flight, idle after {took:.3f}s;"
        f" run_batch cancelled, idle after {took_run_batch:.3f}s"
    )
    assert took < 5.0
    assert took_run_batch < 5.0
    records = check_journal(journal)
    assert sum(r["status"] == "succeeded" for r in records) <= emulator.stats.generations
    assert emulator.stats.in_flight == 0


async def test_an_async_generator_input_is_closed_when_the_batch_stops(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=7)
    closed: list[bool] = []

    async def source() -> AsyncIterator[str]:
        try:
            for i in range(10_000):
                yield f"a{i}"
        finally:
            closed.append(True)

    async with emulated(emulator, KEY) as client, client.batch(source(), concurrency=4) as run:
        async for _ in run:
            break
    assert closed == [True]
