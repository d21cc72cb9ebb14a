"""The store's state machine on real SQLite and Postgres: claims, leases, the reaper.

pending -> claimed (lease) -> sending (before the request) -> done | failed | skipped, and
ambiguous for a lease that ran out while sending. Each test runs on both stores and both
event loops.
"""

from __future__ import annotations

import sys

import anyio
import pytest

from nanobanana_async import Job
from nanobanana_async.batch.results import JobResult
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.batch.stores.session import SqlSession
from nanobanana_async.models import Generation

pytestmark = pytest.mark.anyio


def _store(url: str, lease: float = 60.0) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    store.lease = lease
    return store


async def _session(store: SqlStore) -> SqlSession:
    session = await store.connect(worker=True)
    assert isinstance(session, SqlSession)
    return session


def _done(job_id: str, credits: int = 2) -> JobResult:
    generation = Generation(
        ("https://img.example/x.png",), "gemini-2.5-flash-image", "1:1", 1, credits, 0.1
    )
    return JobResult(
        0, Job("x"), "succeeded", job_id, generation=generation, credits=credits, attempts=1
    )


async def test_add_is_idempotent_by_id(store_url: str) -> None:
    store = _store(store_url)
    assert await store.add(Job(f"a fox {i}", id=f"fox-{i}") for i in range(10)) == 10
    assert await store.add(Job(f"a fox {i}", id=f"fox-{i}") for i in range(12)) == 2
    assert await store.add([f"an owl {i}" for i in range(3)]) == 3
    assert await store.add([f"an owl {i}" for i in range(3)]) == 0  # same content, same ids
    status = await store.status()
    assert status.counts == {"pending": 15}
    assert status.total == 15
    assert status.unfinished == 15
    rows = [row async for row in store.rows()]
    assert [r["id"] for r in rows[:12]] == [f"fox-{i}" for i in range(12)]  # in added order
    assert len({r["idempotency_key"] for r in rows}) == 15


async def test_claims_are_disjoint_and_in_order(store_url: str) -> None:
    store = _store(store_url)
    await store.add(Job(f"job {i}", id=f"j{i:02d}") for i in range(10))
    a, b = await _session(store), await _session(store)
    try:
        first, second = await a.claim(4), await b.claim(4)
        assert [j.id for j in first] == ["j00", "j01", "j02", "j03"]
        assert [j.id for j in second] == ["j04", "j05", "j06", "j07"]
        assert [j.id for j in await a.claim(4)] == ["j08", "j09"]
        assert await b.claim(4) == []
        assert (await store.status()).counts == {"claimed": 10}
    finally:
        await a.close()
        await b.close()
    # Closing gives back what was claimed and never sent.
    assert (await store.status()).counts == {"pending": 10}


async def test_only_the_holder_may_send(store_url: str) -> None:
    store = _store(store_url)
    await store.add([Job("a", id="a"), Job("b", id="b")])
    a, b = await _session(store), await _session(store)
    try:
        [job] = await a.claim(1)
        assert not await b.sending(job.id, job.idempotency_key, 2)
        assert await a.sending(job.id, job.idempotency_key, 2)
        # Written again (a commit whose answer was lost, a retry): this run still holds it.
        assert await a.sending(job.id, job.idempotency_key, 2)
        await a.record(_done(job.id))
        row = await store.get(job.id)
        assert row is not None
        assert row["state"] == "done"
        assert row["credits"] == 2
        assert row["lease_owner"] is None
        assert row["reserved"] == 0
    finally:
        await a.close()
        await b.close()


async def test_the_reaper_returns_claims_and_marks_sends_ambiguous(store_url: str) -> None:
    store = _store(store_url)
    await store.add(Job(f"job {i}", id=f"j{i}") for i in range(3))
    short = _store(store_url, lease=0.3)
    dying, other = await _session(short), await _session(store)
    try:
        claimed = await dying.claim(3)
        assert await dying.sending(claimed[0].id, claimed[0].idempotency_key, 5)
        await anyio.sleep(0.6)  # the dying worker's leases run out
        # An expired lease may no longer send: another worker may have the job by now.
        assert not await dying.sending(claimed[1].id, claimed[1].idempotency_key, 5)
        await other.maintain()
        status = await store.status()
        assert status.counts == {"pending": 2, "ambiguous": 1}
        assert status.ambiguous == ("j0",)
        assert status.credits_may_have_been_spent == 5
        # The ambiguous job is never claimed again; the two never sent are.
        assert [j.id for j in await other.claim(10)] == ["j1", "j2"]
        # The worker that sent it comes back with its answer: that is recorded.
        await dying.record(_done("j0", credits=5))
        row = await store.get("j0")
        assert row is not None
        assert row["state"] == "done"
        assert (await store.status()).credits_may_have_been_spent == 0
    finally:
        await dying.close()
        await other.close()


async def test_heartbeats_keep_a_lease(store_url: str) -> None:
    store = _store(store_url, lease=1.5)
    await store.add([Job("a", id="a")])
    holder, other = await _session(store), await _session(store)
    try:
        [job] = await holder.claim(1)
        for _ in range(10):  # 2 s, longer than the lease, renewed every 0.2 s
            await anyio.sleep(0.2)
            await holder.maintain()
        await other.maintain()
        assert (await store.status()).counts == {"claimed": 1}
        assert await holder.sending(job.id, job.idempotency_key, 2)
    finally:
        await holder.close()
        await other.close()


async def test_a_dead_process_jobs_come_back_without_waiting_for_the_lease(
    store_url: str,
) -> None:
    store = _store(store_url)
    await store.add(Job(f"job {i}", id=f"j{i}") for i in range(4))
    script = f"""
import anyio, os
from nanobanana_async.batch.stores import open_store
async def main():
    session = await open_store({store_url!r}).connect(worker=True)
    jobs = await session.claim(4)
    assert await session.sending(jobs[0].id, jobs[0].idempotency_key, 2)
    os._exit(0)  # killed: nothing closed, nothing given back
anyio.run(main)
"""
    await anyio.run_process([sys.executable, "-c", script], check=True)
    assert (await store.status()).counts == {"claimed": 3, "sending": 1}
    other = await _session(store)  # opening a session runs the reaper
    try:
        status = await store.status()
        assert status.counts == {"pending": 3, "ambiguous": 1}
    finally:
        await other.close()


async def test_retry_puts_ambiguous_failed_and_skipped_jobs_back(store_url: str) -> None:
    store = _store(store_url)
    await store.add(Job(f"job {i}", id=f"j{i}") for i in range(3))
    session = await _session(store)
    try:
        jobs = await session.claim(3)
        assert await session.sending(jobs[0].id, None, 4)
        # Cancelled after its request left: ambiguous.
        cancelled = JobResult(0, Job("x"), "failed", jobs[0].id, credits_may_have_been_spent=4)
        await session.record(cancelled)
        await session.record(JobResult(1, Job("x"), "failed", jobs[1].id, attempts=1))
        assert (await store.status()).counts == {"ambiguous": 1, "failed": 1, "claimed": 1}
    finally:
        await session.close()
    assert await store.retry("ambiguous") == 1
    status = await store.status()
    assert status.counts == {"pending": 2, "failed": 1}
    assert status.credits_may_have_been_spent == 4  # the history stays
    assert await store.retry("failed", "skipped") == 1
    with pytest.raises(ValueError, match="retry takes states"):
        await store.retry("done")


async def test_generated_ids(store_url: str) -> None:
    store = _store(store_url)
    await store.add(Job(f"job {i}", id=f"j{i}") for i in range(3))
    session = await _session(store)
    try:
        [job, *_] = await session.claim(3)
        assert await session.sending(job.id, None, 2)
        await session.record(_done(job.id))
    finally:
        await session.close()
    assert await store.generated(["j0", "j1", "nope"]) == {"j0"}
    assert await store.generated([]) == set()
