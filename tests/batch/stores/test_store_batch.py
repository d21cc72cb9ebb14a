"""Batches and workers on the SQLite and Postgres stores: resume, ambiguity, many workers."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import anyio
import httpx
import pytest

from nanobanana_async import AsyncNanoBanana, Job
from nanobanana_async.batch.stores import (
    JsonlStore,
    SqliteStore,
    SqlStore,
    StoreError,
    open_store,
)
from nanobanana_async.batch.stores.postgres import PostgresStore
from nanobanana_async.batch.stores.session import SqlSession
from nanobanana_async.emulator import Emulator, Faults

pytestmark = pytest.mark.anyio


def _sql(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


async def test_a_rerun_resumes_without_paying_again(store_url: str) -> None:
    emulator = Emulator()
    prompts = [f"a bonsai, take {i}" for i in range(8)]
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        first = await client.run_batch(prompts[:5], journal=store_url, concurrency=3)
        again = await client.run_batch(prompts, journal=store_url, concurrency=3)
    assert first.succeeded == 5
    assert again.succeeded == 8
    assert again.resumed == 5
    assert again.credits_spent == 6  # only the three new ones
    assert emulator.stats.generations == 8
    status = await _sql(store_url).status()
    assert status.counts == {"done": 8}
    assert status.credits_spent == 16


async def test_the_key_sent_is_the_stored_one(store_url: str) -> None:
    emulator = Emulator()
    store = _sql(store_url)
    await store.add(f"a lamp, take {i}" for i in range(6))
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        report = await client.run_worker(store, concurrency=3)
    assert report.succeeded == 6
    keys = {row["idempotency_key"] async for row in store.rows()}
    assert set(emulator.stats.charged_idempotency_keys) == keys


async def test_a_job_cancelled_in_flight_is_ambiguous_and_not_sent_again(store_url: str) -> None:
    # The emulator remembers replies: a job retried with its stored key is not charged twice.
    emulator = Emulator(faults=Faults(latency=30.0), honour_idempotency=True)
    jobs = [Job(f"a kite, take {i}", id=f"kite-{i}") for i in range(3)]
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        async with client.batch(jobs, journal=store_url, concurrency=3) as run:

            async def consume() -> None:
                async for _ in run:
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                with anyio.fail_after(30):
                    while emulator.stats.in_flight < 3:  # noqa: ASYNC110 - a counter
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        store = _sql(store_url)
        status = await store.status()
        assert status.counts == {"ambiguous": 3}
        assert status.credits_may_have_been_spent == 6
        emulator.faults = Faults()
        rerun = await client.run_batch(jobs, journal=store_url)
        assert rerun.skipped == 3
        assert emulator.stats.generate_requests == 3
        assert all("ambiguous" in (r.reason or "") for r in rerun.results)
        # Opting in sends them again, with the key each was first sent with.
        assert await store.retry("ambiguous") == 3
        sent = await client.run_batch(jobs, journal=store_url)
    assert sent.succeeded == 3
    assert emulator.stats.generations == 3
    assert set(emulator.stats.charged_idempotency_keys) == {
        row["idempotency_key"] async for row in store.rows()
    }


async def test_downloads_are_recorded_and_refetched(store_url: str, tmp_path: pathlib.Path) -> None:
    emulator = Emulator()
    jobs = [Job("a red fox", id="fox"), Job("two owls", id="owls", num=2)]
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        await client.run_batch(jobs, journal=store_url, download_dir=tmp_path / "a")
        again = await client.run_batch(jobs, journal=store_url, download_dir=tmp_path / "b")
    assert again.resumed == 2
    assert emulator.stats.generations == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "fox.png",
        "owls+1.png",
        "owls+2.png",
    ]
    row = await _sql(store_url).get("owls")
    assert row is not None
    assert [pathlib.Path(f).parent.name for f in row["files"]] == ["b", "b"]


async def test_workers_share_a_store_and_send_each_job_once(store_url: str) -> None:
    emulator = Emulator(faults=Faults(latency=(0.0, 0.02)))
    store = _sql(store_url)
    assert await store.add(f"a lighthouse, take {i}" for i in range(60)) == 60
    reports = []

    async def work() -> None:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
            reports.append(await client.run_worker(store_url, concurrency=4))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(work)
    assert sum(r.succeeded for r in reports) == 60
    assert emulator.stats.generations == 60
    assert emulator.stats.duplicate_charges == 0
    status = await store.status()
    assert status.counts == {"done": 60}
    assert status.credits_spent == 120


async def test_a_worker_gives_back_what_its_budget_cannot_take(store_url: str) -> None:
    emulator = Emulator()
    store = _sql(store_url)
    await store.add(f"a cup, take {i}" for i in range(5))
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        report = await client.run_worker(store, concurrency=1, max_credits=4)
        # The job that did not fit is given back, and the worker stops taking more.
        assert report.succeeded == 2
        assert report.skipped == 1
        assert (await store.status()).counts == {"done": 2, "pending": 3}
        rest = await client.run_worker(store, concurrency=2)
    assert rest.succeeded == 3
    assert emulator.stats.generations == 5


async def test_a_worker_follows_new_jobs(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "jobs.db")
    emulator = Emulator()
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        seen = []
        with anyio.fail_after(30):
            async with client.worker(store, follow=True, poll_interval=0.05) as run:
                await store.add(["first"])
                async for result in run:
                    seen.append(result.job.prompt if result.job else None)
                    if len(seen) == 1:
                        await store.add(["second"])
                    if len(seen) == 2:
                        break
    assert seen == ["first", "second"]


async def test_a_worker_needs_a_store_with_pending_jobs(tmp_path: pathlib.Path) -> None:
    async with AsyncNanoBanana("sk-test", transport=Emulator().transport()) as client:
        with pytest.raises(StoreError, match="JSONL journal"):
            await client.run_worker(tmp_path / "run.jsonl")


async def test_an_unreachable_store_is_a_clear_error() -> None:
    url = "postgresql://bob:hunter2@127.0.0.1:9/jobs"
    async with AsyncNanoBanana("sk-test", transport=Emulator().transport()) as client:
        with pytest.raises(StoreError) as info:
            await client.run_batch(["a"], journal=url)
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def test_open_store_reads_urls_and_paths(tmp_path: pathlib.Path) -> None:
    assert isinstance(open_store("run.jsonl"), JsonlStore)
    assert isinstance(open_store(tmp_path / "run.jsonl"), JsonlStore)
    relative = open_store("sqlite:///data/run.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == "data/run.db"
    absolute = open_store("sqlite:////var/run.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == "/var/run.db"
    store = SqliteStore(tmp_path / "x.db")
    assert open_store(store) is store
    for bad in ("sqlite://run.db", "sqlite:///", "redis://localhost/0"):
        with pytest.raises(ValueError, match="store"):
            open_store(bad)
    with pytest.raises(ValueError, match="journal must be"):
        open_store(42)  # type: ignore[arg-type]


def test_urls_are_shown_without_passwords() -> None:
    shown = PostgresStore("postgresql://bob:s3cret@db:5432/jobs").url
    assert shown == "postgresql://bob:***@db:5432/jobs"
    assert PostgresStore("postgresql://db/jobs").url == "postgresql://db/jobs"
    assert PostgresStore("host=db password=s3cret dbname=x").url == "host=db password=*** dbname=x"
    assert "s3cret" not in repr(open_store("postgresql://bob:s3cret@db/jobs"))


def test_psycopg_is_imported_only_for_postgres(tmp_path: pathlib.Path) -> None:
    script = f"""
import sys, anyio
import nanobanana_async
from nanobanana_async import AsyncNanoBanana
from nanobanana_async.emulator import Emulator
async def main():
    async with AsyncNanoBanana("sk-test", transport=Emulator().transport()) as client:
        report = await client.run_batch(["a"], journal="sqlite:///{tmp_path}/x.db")
    assert report.ok
anyio.run(main)
assert "psycopg" not in sys.modules, "psycopg was imported"
from nanobanana_async.batch.stores import PostgresStore
assert "psycopg" in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


class _Witness(httpx.AsyncBaseTransport):
    """Reads the store through a connection of its own as each request is about to leave:
    only committed rows are visible there."""

    def __init__(self, inner: httpx.AsyncBaseTransport, store: SqlStore) -> None:
        self.inner = inner
        self.store = store
        self.seen: list[tuple[str, str | None, str | None, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/generate"):
            job_id = "job-" + json.loads(request.content)["prompt"].rsplit(" ", 1)[-1]
            row = await self.store.get(job_id)
            state = None if row is None else row["state"]
            key = None if row is None else row["idempotency_key"]
            reserved = 0 if row is None else int(row["reserved"])
            self.seen.append((job_id, state, key, reserved))
            assert state == "sending", f"{job_id} left while its row was {state}"
            assert key == request.headers["idempotency-key"]
        return await self.inner.handle_async_request(request)


async def test_a_request_leaves_only_once_its_sending_row_is_committed(store_url: str) -> None:
    # Group commit shares transactions between jobs, and a batch writes a job's row only when
    # it is first recorded: the "sending" row (with its key and reservation) must still be
    # committed, visible to any other connection, before each attempt's request leaves.
    emulator = Emulator(faults=Faults(server_error_rate=0.3), seed=7)
    witness = _Witness(emulator.transport(), _sql(store_url))
    jobs = [Job(f"a quay at dusk, take {i}", id=f"job-{i}") for i in range(40)]
    async with AsyncNanoBanana("sk-test", transport=witness, max_retries=3) as client:
        report = await client.run_batch(jobs, journal=store_url, concurrency=16, max_credits=80)
    assert report.succeeded + report.failed == 40
    assert len(witness.seen) == emulator.stats.generate_requests > 40  # retries were checked
    assert all(reserved == 2 for _, _, _, reserved in witness.seen)
    assert {job_id for job_id, *_ in witness.seen} == {job.id for job in jobs}


async def test_a_sqlite_lock_held_by_another_process_delays_writes_and_fails_none(
    tmp_path: pathlib.Path,
) -> None:
    # A run writes on the event loop's thread without waiting for locks (busy_timeout 0);
    # a write that finds the database locked goes to a worker thread, which waits for it.
    import sqlite3
    import threading

    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    other = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    timers: list[threading.Timer] = []

    class LockOnce(httpx.AsyncBaseTransport):
        """Another process takes the write lock as the fifth request leaves (for 0.3 s)."""

        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner, self.sent = inner, 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.sent += 1
            if self.sent == 5:
                other.execute("BEGIN IMMEDIATE")
                timers.append(threading.Timer(0.3, other.execute, args=("COMMIT",)))
                timers[0].start()
            return await self.inner.handle_async_request(request)

    emulator = Emulator()
    jobs = [Job(f"a kite, take {i}", id=f"job-{i}") for i in range(30)]
    try:
        async with AsyncNanoBanana("sk-test", transport=LockOnce(emulator.transport())) as client:
            report = await client.run_batch(jobs, journal=url, concurrency=8)
    finally:
        for timer in timers:
            timer.join()
        other.close()
    assert timers  # the lock was taken while the batch ran
    assert report.succeeded == 30
    assert emulator.stats.generate_requests == 30  # nothing sent twice, nothing lost
    assert (await _sql(url).status()).counts == {"done": 30}


async def test_a_wal_checkpoint_holds_no_other_write_back(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint a run makes now and then syncs the database file: it is run by the job
    # whose write made it due, not by the commit, which would hold every other write back.
    from nanobanana_async.batch.stores import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_CHECKPOINT_WRITES", 10)
    gate = anyio.Event()
    checkpointing = False
    done_meanwhile = 0

    async def slow_checkpoint(self: SqliteStore, pool: object) -> None:
        nonlocal checkpointing
        if gate.is_set() or checkpointing:
            return
        checkpointing = True
        await gate.wait()  # a checkpoint that takes its time
        checkpointing = False

    monkeypatch.setattr(SqliteStore, "_tidy", slow_checkpoint)
    emulator = Emulator()
    jobs = [Job(f"a gull, take {i}", id=f"job-{i}") for i in range(60)]
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        with anyio.fail_after(30):
            async with client.batch(jobs, journal=f"sqlite:///{tmp_path / 'jobs.db'}") as run:
                async for result in run:
                    assert result.ok
                    if checkpointing:
                        done_meanwhile += 1
                        if done_meanwhile == 20:
                            gate.set()
    assert done_meanwhile >= 20  # jobs kept finishing (and writing) during the checkpoint


async def test_a_job_two_runs_take_at_once_is_sent_by_one_only(store_url: str) -> None:
    # Without wait_for_lease a batch writes a job's row only at "sending": two runs may both
    # take it, and the first to record "sending" sends it; the other is refused there.
    slow = _sql(store_url)
    other = await slow.connect()
    assert isinstance(other, SqlSession)
    job = Job("a heron at dusk", id="heron")
    taken = await other.begin("heron", 0, job)  # taken, not yet recorded (waiting, say)
    assert taken.idempotency_key is not None
    emulator = Emulator()
    try:
        async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
            report = await client.run_batch([job], journal=store_url)
        assert report.succeeded == 1
        assert not await other.sending("heron", taken.idempotency_key, 2)  # refused: not sent
    finally:
        await other.close()
    assert emulator.stats.generate_requests == 1
    assert (await _sql(store_url).status()).counts == {"done": 1}
