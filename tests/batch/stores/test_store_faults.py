"""A store that fails under a running batch or worker (SQLite and Postgres, asyncio and Trio).

Faults are injected into the stores' real connections (``tests/support/store_faults.py``):
lost connections, outages, refusals of one row. The emulator's ledger is the judge: every
credit it took is in the store, in the spool (then put back), or counted as may-have-been-
spent; and one job's store error never cancels another job's paid request.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana, Job, StoreUnavailableError
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.emulator import Emulator, Faults
from tests.support.batches import until
from tests.support.store_faults import StoreFaults, run_through

pytestmark = pytest.mark.anyio

KEY = "sk-store-faults"


def _store(url: str, **options: str) -> SqlStore:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    store = open_store(f"{url}?{query}" if query else url)
    assert isinstance(store, SqlStore)
    return store


def _jobs(count: int) -> list[Job]:
    return [Job(f"a harbour at dawn, take {i}", id=f"job-{i:03d}") for i in range(count)]


async def _rows(store: SqlStore) -> dict[str, dict[str, Any]]:
    return {row["id"]: row async for row in store.rows()}


async def test_a_failed_write_is_retried_on_a_new_connection(store_url: str) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url))
    faults.fail(2, match="SET state = 'done'")  # two results lose their connection once
    faults.fail(1, match="SET state = 'sending'")
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        report = await client.run_batch(_jobs(6), journal=store, concurrency=3)
    assert report.succeeded == 6
    assert faults.injected["transient"] == 3
    assert emulator.stats.generate_requests == 6  # nothing sent twice
    status = await store.status()
    assert status.counts == {"done": 6}
    assert status.credits_spent == emulator.stats.credits_charged == 12


@pytest.mark.parametrize("mode", ["batch", "worker"])
async def test_an_outage_stops_the_run_and_spools_the_results_in_flight(
    store_url: str, mode: str
) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url, retry_window="0.5"))
    jobs = _jobs(40)
    if mode == "worker":
        await store.add(jobs)
    emulator = Emulator(faults=Faults(latency=0.3))
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        run = (
            client.batch(jobs, journal=store, concurrency=8)
            if mode == "batch"
            else client.worker(store, concurrency=8)
        )
        # The store goes away with 8 paid requests in flight.
        results, failure = await run_through(
            run, emulator, lambda: setattr(faults, "down", True), in_flight=8
        )
    faults.down = False
    assert failure is not None
    message = str(failure)
    assert "\n" not in message
    assert store.url in message
    assert str(store.spool.path) in message
    assert "nanobanana jobs recover" in message
    # No paid request was cancelled: every generation came back and was reported.
    succeeded = [r for r in results if r.ok]
    assert len(succeeded) == emulator.stats.generations >= 8
    assert emulator.stats.generate_requests == emulator.stats.generations
    assert len({r.index for r in results}) == len(results)  # each job reported once
    # What was charged is in the store or in the spool; the next run puts the spool back.
    spooled = store.spool.path.read_text().splitlines()
    assert len(spooled) >= 8
    session = await store.connect(worker=True)
    await session.close()
    assert store.spool.path.read_text() == ""
    status = await store.status()
    assert status.counts["done"] == len(succeeded)
    assert status.credits_spent == emulator.stats.credits_charged
    assert status.credits_may_have_been_spent == 0
    # And a rerun pays for none of them again.
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        if mode == "batch":
            again = await client.run_batch(jobs, journal=store, concurrency=8)
            assert again.resumed == len(succeeded)
        else:
            again = await client.run_worker(store, concurrency=8)
            assert again.succeeded == len(jobs) - len(succeeded)
    assert emulator.stats.generate_requests == len(jobs)
    assert (await store.status()).counts == {"done": len(jobs)}


async def test_one_job_refused_by_the_store_fails_alone(store_url: str) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url))

    def bad_begin(sql: str, params: dict[str, Any]) -> bool:
        return sql.startswith("INSERT") and params.get("id") == "job-004"

    faults.fail(100, match=bad_begin, transient=False)
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        report = await client.run_batch(_jobs(9), journal=store, concurrency=4)
    failed = [r for r in report.results if not r.ok]
    assert [r.id for r in failed] == ["job-004"]
    assert "job store" in str(failed[0].error)
    assert "injected" in str(failed[0].error)
    assert report.succeeded == 8
    assert emulator.stats.generate_requests == 8  # the refused job was never sent


async def test_a_result_the_store_refuses_is_spooled_and_the_run_goes_on(store_url: str) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url))

    def bad_result(sql: str, params: dict[str, Any]) -> bool:
        return "SET state = 'done'" in sql and params.get("id") == "job-002"

    # Refused in the group's transaction, and again alone: the result goes to the spool.
    faults.fail(1000, match=bad_result, transient=False)
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        report = await client.run_batch(_jobs(6), journal=store, concurrency=3)
    assert report.succeeded == 6
    # Until the spool is put back, the row counts what it may have cost.
    before = await store.status()
    assert before.counts == {"done": 5, "ambiguous": 1}
    assert before.credits_may_have_been_spent == 2
    refused = await store.recover()  # still refused: it stays in the spool
    assert (refused.applied, refused.refused, refused.left) == (0, 1, 1)
    faults.clear()
    recovered = await store.recover()
    assert (recovered.applied, recovered.left) == (1, 0)
    status = await store.status()
    assert status.counts == {"done": 6}
    assert status.credits_spent == emulator.stats.credits_charged


async def test_a_claim_whose_answer_was_lost_still_runs_its_jobs(store_url: str) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url))
    await store.add(_jobs(12))
    # The first claim takes its rows and commits; the answer never comes back.
    faults.fail(1, match="SET state = 'claimed', lease_owner", after=True)
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        report = await client.run_worker(store, concurrency=4)
    assert faults.injected["transient"] == 1
    assert report.succeeded == 12
    assert (await store.status()).counts == {"done": 12}
    assert emulator.stats.generate_requests == 12


async def test_a_worker_whose_claims_fail_ends_with_one_error(store_url: str) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url, retry_window="0.3"))
    await store.add(_jobs(5))
    faults.fail(
        1000, match="SET state = 'claimed', lease_owner"
    )  # every claim loses its connection
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            await client.run_worker(store, concurrency=2)
    assert emulator.stats.generate_requests == 0


async def test_a_store_that_never_answered_fails_at_once(store_url: str) -> None:
    faults = StoreFaults()
    store = faults.install(_store(store_url))  # the default 20 s retry window
    faults.down = True
    emulator = Emulator()
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        with anyio.fail_after(10):  # not the retry window: a wrong URL is said at once
            with pytest.raises(StoreUnavailableError, match="unreachable"):
                await client.run_batch(_jobs(3), journal=store)
    assert emulator.stats.generate_requests == 0


async def test_a_following_worker_waiting_for_jobs_ends_when_the_store_goes_away(
    store_url: str,
) -> None:
    # A --follow worker between two polls: the store goes away, its lease renewal finds out,
    # and the worker ends with the store's error at once, not after its poll interval.
    faults = StoreFaults()
    store = faults.install(_store(store_url, retry_window="0.2", lease="0.6"))
    await store.add(_jobs(2))
    emulator = Emulator()
    results: list[Any] = []
    failure: list[StoreUnavailableError] = []
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        run = client.worker(store, follow=True, poll_interval=3600)

        async def consume() -> None:
            try:
                async with run:
                    async for result in run:
                        results.append(result)
            except StoreUnavailableError as exc:
                failure.append(exc)

        with anyio.fail_after(60):  # a guard against a hang: the poll would sleep an hour
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await until(lambda: len(results) == 2 and run._runner._waits)  # polling
                faults.down = True
    faults.down = False
    assert len(failure) == 1
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert (await store.status()).counts == {"done": 2}
