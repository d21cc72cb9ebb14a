"""Answers lost after the charge, as every store records them (SQLite, Postgres, JSONL).

The emulator charges, then sends a success body cut short: the client cannot read it, and
the server has been paid. Such a job is ambiguous (stored so, counted as may-have-been-spent,
never re-sent by ``retry --failed``); with ``retry_ambiguous`` every attempt that may have been
charged is in the store before the next one leaves, so a kill at any point leaves the store
counting all of them.
"""

from __future__ import annotations

import json
import pathlib

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana, Job
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.batch.stores.session import SqlSession
from nanobanana_async.emulator import Emulator, Faults

pytestmark = pytest.mark.anyio

LOST = Faults(truncated_success_rate=1.0)  # charged, then a success body cut short


def _sql(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


async def test_a_lost_answer_is_stored_ambiguous_and_not_retried_as_failed(store_url: str) -> None:
    emulator = Emulator(faults=LOST)
    jobs = [Job("a pier in fog", id="pier"), Job("a lighthouse", id="light")]
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        report = await client.run_batch(jobs, journal=store_url, concurrency=2)
        assert report.failed == 2
        assert report.credits_may_have_been_spent == 4 == emulator.stats.credits_charged
        store = _sql(store_url)
        status = await store.status()
        assert status.counts == {"ambiguous": 2}
        assert status.credits_may_have_been_spent == 4
        assert await store.retry("failed") == 0  # --failed never re-sends a possibly paid job
        emulator.faults = Faults()
        rerun = await client.run_batch(jobs, journal=store_url)
    assert rerun.skipped == 2
    assert all("ambiguous" in (r.reason or "") for r in rerun.results)
    assert emulator.stats.generate_requests == 2


async def test_the_jsonl_journal_records_a_lost_answer_as_ambiguous(tmp_path: pathlib.Path) -> None:
    emulator = Emulator(faults=LOST)
    journal = tmp_path / "run.jsonl"
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        await client.run_batch([Job("a pier in fog", id="pier")], journal=journal)
    [line] = journal.read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "ambiguous"
    assert record["credits_may_have_been_spent"] == 2


async def test_a_jsonl_rerun_does_not_send_a_lost_answer_again(tmp_path: pathlib.Path) -> None:
    # One rule in every store: a job that may have been charged and has no result is
    # ambiguous, and a rerun skips it (as SQLite and Postgres do) instead of paying again.
    emulator = Emulator(faults=LOST)
    journal = tmp_path / "run.jsonl"
    jobs = [Job("a pier in fog", id="pier"), Job("a lighthouse", id="light")]
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        await client.run_batch(jobs[:1], journal=journal)
        emulator.faults = Faults()
        rerun = await client.run_batch(jobs, journal=journal)
    [pier, light] = rerun.results
    assert pier.status == "skipped"
    assert "ambiguous" in (pier.reason or "")
    assert "lost its answer" in (pier.reason or "")
    assert light.ok
    assert emulator.stats.generate_requests == 2  # the lost one once, the new one once


async def test_a_clear_failure_stays_failed(store_url: str) -> None:
    emulator = Emulator(faults=Faults(server_error_rate=1.0))  # 500: nothing charged
    async with AsyncNanoBanana("sk-test", transport=emulator.transport(), max_retries=0) as client:
        await client.run_batch([Job("a pier", id="pier")], journal=store_url)
    store = _sql(store_url)
    assert (await store.status()).counts == {"failed": 1}
    assert await store.retry("failed") == 1


async def test_each_possibly_charged_attempt_is_recorded_before_the_next(store_url: str) -> None:
    # Every attempt is charged and its connection dropped; each takes a while, so the store
    # can be read while the third one is on the wire: what a kill at that moment would leave.
    emulator = Emulator(faults=Faults(drop_rate=1.0, drop_after_charge_share=1.0, latency=0.4))
    store = _sql(store_url)
    await store.add([Job("a pier in fog", id="pier")])
    seen = []
    client = AsyncNanoBanana("sk-test", transport=emulator.transport())
    async with client, anyio.create_task_group() as tg:

        async def work() -> None:
            await client.run_worker(store, max_retries=2, retry_ambiguous=True)

        tg.start_soon(work)
        with anyio.fail_after(30):  # a guard against a hang, not a timing assertion
            while emulator.stats.generate_requests < 3 or not emulator.stats.in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        seen.append(await store.status())
    during = seen[0]
    assert during.counts == {"sending": 1}
    # Two attempts answered and lost, one on the wire: three may have been charged.
    assert during.credits_may_have_been_spent == 6
    after = await store.status()
    assert after.counts == {"ambiguous": 1}
    assert after.credits_may_have_been_spent == 6 == emulator.stats.credits_charged


async def test_status_counts_a_job_being_sent(store_url: str) -> None:
    store = _sql(store_url)
    await store.add([Job("a", id="a"), Job("b", id="b")])
    session = await store.connect(worker=True)
    assert isinstance(session, SqlSession)
    try:
        [first, _second] = await session.claim(2)
        assert await session.sending(first.id, first.idempotency_key, 5)
        status = await store.status()
        assert status.counts == {"sending": 1, "claimed": 1}
        assert status.credits_may_have_been_spent == 5  # it may be charged right now
    finally:
        await session.close()
