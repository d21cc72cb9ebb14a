"""``wait_for_lease``: a batch that finds its job held by another run waits for that run.

Without it a batch skips such a job ("held by another worker"). With it (what the Ray
integration uses: a retried task may find rows a killed actor on another machine held) the
batch waits until the holder finishes the job or its lease runs out, then resumes the job,
sends it, or reports it ambiguous: never twice. Each test runs on SQLite and Postgres, on
asyncio and Trio. The holder is a session whose owner names another machine, so nothing can
tell that it is gone but its lease.
"""

from __future__ import annotations

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana, InvalidRequestError, Job, PostgresStore, SqliteStore
from nanobanana_async.batch.results import JobResult
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.batch.stores.session import SqlSession
from nanobanana_async.emulator import Emulator
from nanobanana_async.models import Generation

pytestmark = pytest.mark.anyio

JOB = Job("a red fox", id="fox")
ELSEWHERE = "another-machine:4242:0badf00d"  # not this machine: only its lease can expire


def _store(url: str, *, lease: float, wait: bool) -> SqlStore:
    store = open_store(f"{url}{'&' if '?' in url else '?'}wait_for_lease={int(wait)}")
    assert isinstance(store, SqlStore)
    store.lease = lease
    return store


async def _holder(url: str, *, lease: float, sending: bool = False) -> SqlSession:
    """A session of a run on another machine that took ``JOB`` (and began sending it).

    Its store waits for leases: such a run claims a job as it takes it (without, a batch
    writes the job's row only at "sending")."""
    session = await _store(url, lease=lease, wait=True).connect()
    assert isinstance(session, SqlSession)
    session.owner = ELSEWHERE
    begin = await session.begin("fox", 0, JOB)
    assert begin.idempotency_key is not None
    if sending:
        assert await session.sending("fox", begin.idempotency_key, 2)
    return session


async def test_without_it_a_held_job_is_skipped(store_url: str) -> None:
    holder = await _holder(store_url, lease=60)
    emulator = Emulator()
    try:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
            report = await client.run_batch([JOB], journal=_store(store_url, lease=60, wait=False))
    finally:
        await holder.close()
    (result,) = report.results
    assert result.status == "skipped"
    assert "held by another worker" in (result.reason or "")
    assert emulator.stats.generate_requests == 0


async def test_a_job_claimed_by_a_gone_run_is_sent_once_its_lease_runs_out(store_url: str) -> None:
    holder = await _holder(store_url, lease=1.0)  # claimed, never sent, never renewed
    emulator = Emulator()
    try:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
            with anyio.fail_after(30):
                report = await client.run_batch(
                    [JOB, Job("an owl", id="owl")], journal=_store(store_url, lease=1.0, wait=True)
                )
    finally:
        await holder.close()
    assert [r.status for r in report.results] == ["succeeded", "succeeded"]
    assert emulator.stats.generations == 2
    row = await _store(store_url, lease=1.0, wait=False).get("fox")
    assert row is not None
    assert row["state"] == "done"
    assert set(emulator.stats.charged_idempotency_keys) >= {row["idempotency_key"]}


async def test_a_job_a_gone_run_was_sending_comes_back_ambiguous_unsent(store_url: str) -> None:
    holder = await _holder(store_url, lease=1.0, sending=True)
    emulator = Emulator()
    try:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
            with anyio.fail_after(30):
                report = await client.run_batch(
                    [JOB], journal=_store(store_url, lease=1.0, wait=True)
                )
    finally:
        await holder.close()
    (result,) = report.results
    assert result.status == "skipped"
    assert (result.reason or "").startswith("ambiguous")
    assert emulator.stats.generate_requests == 0  # it may have been charged: never sent again
    status = await _store(store_url, lease=1.0, wait=False).status()
    assert status.counts == {"ambiguous": 1}
    assert status.credits_may_have_been_spent == 2


async def test_a_job_its_live_holder_finishes_is_resumed_with_its_credits(store_url: str) -> None:
    holder = await _holder(store_url, lease=60, sending=True)
    emulator = Emulator()
    done = JobResult(
        0,
        JOB,
        "succeeded",
        "fox",
        generation=Generation(("https://img.example/fox.png",), JOB.model, "1:1", 1, 2, 0.1),
        credits=2,
        attempts=1,
    )
    results: list[JobResult] = []
    try:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:

            async def run() -> None:
                store = _store(store_url, lease=60, wait=True)
                results.extend((await client.run_batch([JOB], journal=store)).results)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    await anyio.sleep(0.5)  # the batch is waiting meanwhile
                    assert results == []
                    await holder.record(done)
    finally:
        await holder.close()
    (result,) = results
    assert result.status == "succeeded"
    assert result.resumed
    assert result.generation is not None
    assert result.generation.urls == ("https://img.example/fox.png",)
    assert result.generation.credits == 2  # the stored credits
    assert emulator.stats.generate_requests == 0


async def test_a_stopped_batch_stops_waiting(store_url: str) -> None:
    holder = await _holder(store_url, lease=600)
    emulator = Emulator()
    try:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
            store = _store(store_url, lease=600, wait=True)
            with anyio.fail_after(30):  # far less than the holder's lease
                async with (
                    client.batch([JOB], journal=store) as run,
                    anyio.create_task_group() as tg,
                ):

                    async def stop_soon() -> None:
                        await anyio.sleep(0.3)
                        run.stop("enough for today")

                    tg.start_soon(stop_soon)
                    results = [result async for result in run]
    finally:
        await holder.close()
    (result,) = results
    assert result.status == "skipped"
    assert "held by another worker" in (result.reason or "")
    assert emulator.stats.generate_requests == 0


async def test_a_cancelled_batch_stops_waiting(store_url: str) -> None:
    holder = await _holder(store_url, lease=600)
    try:
        async with AsyncNanoBanana("sk-test", transport=Emulator().transport()) as client:
            store = _store(store_url, lease=600, wait=True)
            with anyio.fail_after(30), anyio.move_on_after(0.5) as scope:
                await client.run_batch([JOB], journal=store)
            assert scope.cancelled_caught
    finally:
        await holder.close()


def test_the_option_in_urls_and_keywords() -> None:
    assert not SqliteStore("run.db").wait_for_lease
    assert SqliteStore("run.db", wait_for_lease=True).wait_for_lease
    assert PostgresStore("postgresql://db/x?wait_for_lease=1").wait_for_lease
    assert not PostgresStore("postgresql://db/x?wait_for_lease=false").wait_for_lease
    with pytest.raises(InvalidRequestError, match=r"wait_for_lease=.*expected 1 or 0"):
        open_store("sqlite:///run.db?wait_for_lease=maybe")
    with pytest.raises(InvalidRequestError, match="given both"):
        PostgresStore("postgresql://db/x?wait_for_lease=1", wait_for_lease=True)
