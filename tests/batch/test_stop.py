"""Stopping a batch or a worker: ``BatchRun.stop`` (what SIGTERM and Ctrl-C do), its grace
period, and the accounting of jobs a cancellation cut short.

Every charged generation must be counted in the report, the stats and the store, even when
the batch was cancelled while its images downloaded or its requests were in flight: the
emulator's ledger is the judge. Every test runs on asyncio and Trio, in-process.
"""

from __future__ import annotations

import json
import pathlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from nanobanana_async import InvalidRequestError, Job
from nanobanana_async.batch import GracefulStop
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.emulator import Emulator, Faults
from tests.support.batches import consuming, until
from tests.support.clients import emulated

pytestmark = pytest.mark.anyio

KEY = "nb-stop-0123456789abcdefXYZ"
BALANCE = 100_000
PRICE = 2
CDN = "https://cdn.stop.test"


class SlowImages(httpx.AsyncBaseTransport):
    """The emulator, with an image host that answers only once ``opened`` is set."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = emulator.transport()
        self.opened = anyio.Event()
        self.waiting = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.stop.test":
            self.waiting += 1
            try:
                await self.opened.wait()
            finally:
                self.waiting -= 1
            request = httpx.Request(
                request.method, request.url.copy_with(scheme="https", host="api.test")
            )
        return await self.inner.handle_async_request(request)


def spent(emulator: Emulator) -> int:
    return BALANCE - emulator.balance(KEY)


@pytest.fixture(params=["jsonl", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "jsonl":
        return str(tmp_path / "run.jsonl")
    return f"sqlite:///{tmp_path / 'run.db'}"


async def stored_spent(journal: str) -> tuple[int, int]:
    """Credits spent and may-have-been-spent, as the journal says."""
    if journal.endswith(".jsonl"):
        last: dict[str, dict[str, Any]] = {}
        for line in (await anyio.Path(journal).read_text()).splitlines():
            record = json.loads(line)
            last[record["id"]] = record
        return (
            sum(r["credits"] for r in last.values()),
            sum(r.get("credits_may_have_been_spent", 0) for r in last.values()),
        )
    store = open_store(journal)
    assert isinstance(store, SqlStore)
    status = await store.status()
    return status.credits_spent, status.credits_may_have_been_spent


# -- item: a generation whose download was cancelled is counted --------------------------------


@pytest.mark.parametrize("how", ["cancel", "stop"])
async def test_cancelled_downloads_are_counted_in_report_stats_and_store(
    tmp_path: pathlib.Path, journal: str, how: str
) -> None:
    emulator = Emulator(keys={KEY: BALANCE}, image_base_url=CDN, seed=1)
    transport = SlowImages(emulator)
    jobs = [Job(f"a slow image {i}", id=f"slow-{i}") for i in range(8)]
    async with emulated(emulator, KEY, transport=transport) as api:
        run = api.batch(jobs, concurrency=4, journal=journal, download_dir=tmp_path / "out")
        with anyio.CancelScope() as scope:
            async with consuming(run) as results:
                # Four generated and paid for, their images downloading.
                await until(lambda: transport.waiting == 4)
                if how == "cancel":
                    scope.cancel()  # the scope around the batch: Ctrl-C, before
                else:
                    run.stop("test", grace=0)  # a grace period that ran out
        report = run.report(results)
    assert emulator.stats.generations == 4
    assert spent(emulator) == 4 * PRICE
    # The report, its stats and the store all have what was charged.
    assert report.credits_spent == spent(emulator)
    assert run.stats.credits_spent == spent(emulator)
    assert report.total == report.failed == 4
    assert all("download was cancelled" in str(r.error) for r in report.results)
    assert all(r.generation is not None for r in report.results)
    assert await stored_spent(journal) == (spent(emulator), 0)

    # The rerun downloads them without paying again, and runs the rest.
    transport.opened.set()
    async with emulated(emulator, KEY, transport=transport) as api:
        again = await api.run_batch(jobs, journal=journal, download_dir=tmp_path / "out")
    assert again.succeeded == 8
    assert again.resumed == 4
    assert emulator.stats.generations == 8


async def test_cancelled_requests_are_counted_as_may_have_been_spent(journal: str) -> None:
    # The server charges a client that hung up: a cancelled request may well have been paid.
    emulator = Emulator(
        keys={KEY: BALANCE}, faults=Faults(latency=30.0, charge_on_hangup_rate=1.0), seed=2
    )
    jobs = [Job(f"a long wait {i}", id=f"wait-{i}") for i in range(6)]
    async with emulated(emulator, KEY) as api:
        run = api.batch(jobs, concurrency=3, journal=journal)
        async with consuming(run) as results:
            await until(lambda: emulator.stats.in_flight == 3)
            run.stop("test", grace=0)
        report = run.report(results)
    await until(lambda: emulator.stats.in_flight == 0)
    assert spent(emulator) == 3 * PRICE  # charged on hang-up
    assert report.credits_spent == 0
    assert report.credits_may_have_been_spent == 3 * PRICE
    assert report.failed == 3
    assert all(r.may_have_been_charged for r in report.results)
    assert await stored_spent(journal) == (0, 3 * PRICE)
    # Never sent again without asking: the journal holds them as ambiguous.
    emulator.faults = Faults()
    async with emulated(emulator, KEY) as api:
        again = await api.run_batch(jobs, journal=journal)
    assert emulator.stats.generate_requests == 3 + 3
    assert again.skipped == 3
    assert all("ambiguous" in (r.reason or "") for r in again.results if r.status == "skipped")


# -- stop with a grace period ------------------------------------------------------------------


async def test_stop_lets_jobs_in_flight_finish_and_runs_nothing_more(journal: str) -> None:
    emulator = Emulator(keys={KEY: BALANCE}, faults=Faults(latency=0.2), seed=3)
    jobs = [Job(f"a gentle stop {i}", id=f"gentle-{i}") for i in range(20)]
    async with emulated(emulator, KEY) as api:
        run = api.batch(jobs, concurrency=4, journal=journal)
        async with consuming(run) as results:
            await until(lambda: len(results) >= 4 and emulator.stats.in_flight == 4)
            requests = emulator.stats.generate_requests
            run.stop("asked to stop", grace=60)
        report = run.report(results)
    # The four in flight finished; nothing else was sent.
    assert emulator.stats.generate_requests == requests
    assert report.succeeded == requests
    assert report.failed == 0
    assert report.stopped_reason == "asked to stop"
    assert report.stop_cause == "stopped"
    assert report.total == len(results) <= requests + 4  # at most the pulled ones skipped
    assert all(r.status == "succeeded" or "stopped" in (r.reason or "") for r in results)
    assert spent(emulator) == report.credits_spent == (await stored_spent(journal))[0]
    async with emulated(emulator, KEY) as api:
        again = await api.run_batch(jobs, journal=journal)
    assert again.succeeded == 20
    assert emulator.stats.generations == 20  # nothing paid twice


async def test_a_grace_period_that_runs_out_cancels_what_is_left(journal: str) -> None:
    emulator = Emulator(
        keys={KEY: BALANCE}, faults=Faults(latency=(0.05, 30.0), charge_on_hangup_rate=1.0), seed=4
    )
    jobs = [Job(f"some slow {i}", id=f"some-{i}") for i in range(12)]
    async with emulated(emulator, KEY) as api:
        run = api.batch(jobs, concurrency=4, journal=journal)
        async with consuming(run) as results:
            await until(lambda: emulator.stats.generate_requests >= 4)
            run.stop("test", grace=0.3)
        report = run.report(results)
    await until(lambda: emulator.stats.in_flight == 0)
    stored = await stored_spent(journal)
    assert stored == (report.credits_spent, report.credits_may_have_been_spent)
    assert report.credits_spent <= spent(emulator)
    assert spent(emulator) <= report.credits_spent + report.credits_may_have_been_spent
    assert report.failed == report.credits_may_have_been_spent // PRICE


async def test_stop_before_the_batch_starts_sends_nothing() -> None:
    emulator = Emulator(keys={KEY: BALANCE})
    async with emulated(emulator, KEY) as api:
        run = api.batch([f"never {i}" for i in range(5)])
        run.stop("not today")
        async with run:
            results = [r async for r in run]
    assert results == []
    assert emulator.stats.generate_requests == 0
    assert run.stats.stopped_reason == "not today"


async def test_stop_refuses_a_bad_grace() -> None:
    emulator = Emulator(keys={KEY: BALANCE})
    async with emulated(emulator, KEY) as api:
        run = api.batch(["a"])
        for bad in (-1, float("nan"), True, "3"):
            with pytest.raises(InvalidRequestError, match="grace"):
                run.stop(grace=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="grace"):
            GracefulStop(grace=-1)
        await run.aclose()


async def test_stop_cuts_short_a_wait_for_the_next_input() -> None:
    emulator = Emulator(keys={KEY: BALANCE})
    stalled = anyio.Event()

    async def stalling() -> AsyncIterator[str]:
        yield "one"
        stalled.set()
        await anyio.sleep_forever()  # a queue nobody fills
        yield "never"

    async with emulated(emulator, KEY) as api:
        run = api.batch(stalling(), concurrency=2)
        async with consuming(run) as results:
            await stalled.wait()
            await until(lambda: len(results) == 1)
            run.stop("test")  # no grace: it ends only because the wait is cut short
    assert [r.status for r in results] == ["succeeded"]
    assert run.stats.stopped_reason == "test"


async def test_graceful_stop_stops_at_once_the_second_time() -> None:
    emulator = Emulator(keys={KEY: BALANCE}, faults=Faults(latency=30.0))
    stopping = GracefulStop(grace=60)
    async with emulated(emulator, KEY) as api:
        run = stopping.watch(api.batch([f"long {i}" for i in range(4)], concurrency=2))
        async with consuming(run) as results:
            await until(lambda: emulator.stats.in_flight == 2)
            stopping.request(signal.SIGTERM)
            assert stopping.signal is signal.SIGTERM
            await anyio.sleep(0.05)
            assert emulator.stats.in_flight == 2  # the grace period: they go on
            stopping.request(signal.SIGTERM)  # the second time: at once
        report = run.report(results)
    assert report.failed == 2
    assert report.stopped_reason is not None
    assert report.stopped_reason.startswith("SIGTERM: stopped taking jobs")
    # A run watched after the request is stopped as it is watched.
    late = stopping.watch(api.batch(["late"]))
    assert late.stats.stopped_reason is not None


async def test_stop_after_the_batch_ended_changes_nothing() -> None:
    # A signal that comes once the batch is over (while its summary is written) must not
    # make a finished batch look stopped.
    emulator = Emulator(keys={KEY: BALANCE})
    async with emulated(emulator, KEY) as api:
        run = api.batch(["done already"])
        async with run:
            results = [r async for r in run]
        run.stop("too late", grace=0)
    assert results[0].ok
    assert run.stats.stopped_reason is None
    assert run.report(results).stop_cause is None
