"""Redis stopped in the middle of a batch, on asyncio and Trio, over a loopback socket: no
request leaves while it is down, the jobs it refused say why, nothing is lost (a rerun with
the journal does them), the same batch goes on when Redis is back, and settlements that met
the outage are sent then. A connection held across the client's life meets refused
connections here: the batch must end normally."""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import httpx
import pytest

from nanobanana_async import AsyncNanoBanana, LimitsUnavailableError, RedisLimits
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.redis_server import RedisServer

from .helpers import KEY, ledger

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS = 60


async def paced(n: int, every: float) -> AsyncIterator[str]:
    for i in range(n):
        yield f"outage prompt {i}"
        await anyio.sleep(every)


async def test_redis_stopped_mid_batch(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    ns = redis_server.namespace()
    journal = tmp_path / "run.jsonl"
    with serve(Emulator(faults=Faults(latency=0.05))) as server:
        limits = await ledger(redis_url, ns, 1000, max_per_second=40)
        async with AsyncNanoBanana(KEY, base_url=server.base_url, limits=limits) as nb:
            outage: list[float] = []

            async def take_redis_down() -> None:
                await anyio.sleep(1.0)
                await anyio.to_thread.run_sync(redis_server.stop)
                outage.append(time.monotonic())
                await anyio.sleep(1.0)
                outage.append(time.monotonic())
                await anyio.to_thread.run_sync(redis_server.start)

            async with anyio.create_task_group() as tg:
                tg.start_soon(take_redis_down)
                report = await nb.run_batch(paced(JOBS, 0.05), concurrency=4, journal=journal)
            status = await limits.status()
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{server.base_url}/_emulator/stats")).json()

    failed = [r for r in report.results if r.status == "failed"]
    # Every job is reported; those refused while Redis was down say so and were never sent.
    assert report.total == JOBS
    assert failed, "no job met the outage"
    assert all(isinstance(r.error, LimitsUnavailableError) for r in failed)
    assert all(r.attempts == 0 and r.credits_may_have_been_spent == 0 for r in failed)
    assert report.succeeded == JOBS - len(failed)
    # It went on once Redis was back: jobs after the outage succeeded in the same batch.
    assert report.results[-1].ok or any(r.ok for r in report.results[-10:])
    # No request left while Redis was down (a slot admitted just before the stop may start
    # within its spacing: 4 workers x 25 ms).
    down_from, down_to = outage[0] + 0.2, outage[1]
    starts = stats["request_start_times"]
    assert not [t for t in starts if down_from < t < down_to]
    # The ledger covers the server: a settlement that met the outage was sent once Redis was
    # back (before the client closed), so the ledger holds what the server charged.
    assert stats["credits_charged"] == 2 * report.succeeded
    assert (status.spent, status.reserved) == (stats["credits_charged"], 0)

    # Nothing is lost: a rerun with the journal sends exactly the jobs that failed.
    with serve(Emulator()) as server:
        async with AsyncNanoBanana(
            KEY, base_url=server.base_url, limits=RedisLimits(redis_url, namespace=ns)
        ) as nb:
            rerun = await nb.run_batch(paced(JOBS, 0), concurrency=4, journal=journal)
        assert server.emulator.stats.generations == len(failed)
    assert rerun.succeeded == JOBS


async def test_redis_refusing_connections_under_a_running_batch(
    redis_server: RedisServer, redis_url: str
) -> None:
    # Refused while the pool had live connections and calls in flight, then back: the batch
    # and the client close cleanly (no "cancel scope that isn't the current task's").
    with serve(Emulator()) as server:
        limits = await ledger(redis_url, redis_server.namespace(), 10_000)
        async with AsyncNanoBanana(KEY, base_url=server.base_url, limits=limits) as nb:
            async with nb.batch(paced(400, 0.005), concurrency=16) as run:
                seen = 0
                async for result in run:
                    seen += 1
                    if seen == 50:
                        await anyio.to_thread.run_sync(redis_server.stop)
                    if seen == 150:
                        await anyio.to_thread.run_sync(redis_server.start)
                    assert result.ok or isinstance(result.error, LimitsUnavailableError)
            assert seen == 400
            await nb.generate("after the outage")


@pytest.mark.parametrize("opened", [True, False], ids=["open", "not-open"])
async def test_a_settlement_that_met_an_outage_is_sent_when_redis_is_back(
    redis_server: RedisServer, redis_url: str, opened: bool
) -> None:
    # Not kept until its lease ends (600 s for limits not open): the last jobs of a nearly
    # spent budget would wait that long.
    limits = await ledger(redis_url, redis_server.namespace(), 10)
    async with AsyncExitStack() as stack:
        if opened:
            await stack.enter_async_context(limits)
        permit = await limits.acquire(4)
        await anyio.to_thread.run_sync(redis_server.stop)
        try:
            await limits.settle(permit, spent=4)
        except LimitsUnavailableError:
            assert not opened  # awaited when not open; posted (and retried) when open
        await anyio.sleep(0.6)  # a retry meets the outage too
        await anyio.to_thread.run_sync(redis_server.start)
        if not opened:
            await limits.acquire(0)  # the next call carries it
        with anyio.fail_after(10):
            while (status := await limits.status()).reserved:  # noqa: ASYNC110 (Redis's state)
                await anyio.sleep(0.1)
    assert (status.spent, status.uncertain, status.reserved, status.left) == (4, 0, 0, 6)
