"""The job table's schema version, its in-place upgrade, and queues (SQLite and Postgres).

A database written by an older nanobanana-async (the table keyed by id alone, no schema
table) is upgraded when a store opens it: every job kept, in queue "default"; jobs stored
``failed`` after a lost answer become ``ambiguous``. Queues let pipelines share a database.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana, Job, StoreError
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.emulator import Emulator

pytestmark = pytest.mark.anyio

# The table as nanobanana-async made it before schema versions (sql.py on main, verbatim but
# for the dialect's types): what an upgrade must read.
_V1_TABLE = """CREATE TABLE IF NOT EXISTS nanobanana_jobs (
    id TEXT PRIMARY KEY,
    idx BIGINT NOT NULL,
    prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    image_size TEXT NOT NULL,
    num INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','claimed','sending','done',
        'failed','skipped','ambiguous')),
    attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT NOT NULL,
    lease_owner TEXT,
    lease_until {real},
    reserved INTEGER NOT NULL DEFAULT 0,
    credits INTEGER NOT NULL DEFAULT 0,
    uncertain INTEGER NOT NULL DEFAULT 0,
    urls TEXT,
    files TEXT,
    error TEXT,
    reason TEXT,
    updated_at {real} NOT NULL
){suffix}"""
_V1_INDEXES = (
    "CREATE INDEX IF NOT EXISTS nanobanana_jobs_pending ON nanobanana_jobs (idx) "
    "WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS nanobanana_jobs_lease ON nanobanana_jobs (lease_until) "
    "WHERE state IN ('claimed','sending')",
    "CREATE INDEX IF NOT EXISTS nanobanana_jobs_owner ON nanobanana_jobs (lease_owner) "
    "WHERE state IN ('claimed','sending')",
    "CREATE INDEX IF NOT EXISTS nanobanana_jobs_order ON nanobanana_jobs (idx, id)",
)
# id, idx, state, credits, uncertain, reserved, urls
_V1_ROWS = [
    ("a", 0, "done", 2, 0, 0, '["https://img.test/a.png"]'),
    ("b", 1, "pending", 0, 0, 0, None),
    ("c", 2, "failed", 0, 2, 0, None),  # every answer lost: may have been charged
    ("d", 3, "failed", 0, 0, 0, None),  # a clear refusal: nothing charged
    ("e", 4, "ambiguous", 0, 0, 2, None),
]


def _create_v1(url: str) -> None:
    """An old database: the v1 table with a row in each interesting state."""
    postgres = url.startswith("postgresql")
    ddl = _V1_TABLE.format(
        real="DOUBLE PRECISION" if postgres else "REAL", suffix="" if postgres else " WITHOUT ROWID"
    )
    insert = (
        "INSERT INTO nanobanana_jobs (id, idx, prompt, model, image_size, num, state, credits, "
        "uncertain, reserved, urls, idempotency_key, updated_at) VALUES ({m}, {m}, 'a prompt', "
        "'gemini-2.5-flash-image', '1:1', 1, {m}, {m}, {m}, {m}, {m}, {m}, 0)"
    )
    rows = [(*row, f"key-{row[0]}") for row in _V1_ROWS]
    if postgres:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for statement in (ddl, *_V1_INDEXES):
                conn.execute(statement)
            for row in rows:
                conn.execute(insert.format(m="%s"), row)
        return
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for statement in (ddl, *_V1_INDEXES):
            conn.execute(statement)
        conn.executemany(insert.format(m="?"), rows)


def _store(url: str, **options: str) -> SqlStore:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    store = open_store(f"{url}?{query}" if query else url)
    assert isinstance(store, SqlStore)
    return store


async def _rows(store: SqlStore) -> dict[str, dict[str, Any]]:
    return {row["id"]: row async for row in store.rows()}


async def test_an_old_table_is_upgraded_in_place(store_url: str) -> None:
    await anyio.to_thread.run_sync(_create_v1, store_url)
    store = _store(store_url)
    status = await store.status()
    assert status.counts == {"done": 1, "pending": 1, "failed": 1, "ambiguous": 2}
    assert status.credits_spent == 2
    assert status.credits_may_have_been_spent == 4  # c's lost answer and e's reservation
    assert status.ambiguous == ("c", "e")
    rows = await _rows(store)
    assert list(rows) == ["a", "b", "c", "d", "e"]
    assert rows["a"]["urls"] == ["https://img.test/a.png"]
    assert rows["d"]["state"] == "failed"
    assert {r["idempotency_key"] for r in rows.values()} == {f"key-{i}" for i in "abcde"}
    # The upgraded table is the new one: queue "default", and a worker runs its pending job.
    emulator = Emulator()
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        report = await client.run_worker(store)
    assert [r.id for r in report.results] == ["b"]
    assert await store.retry("failed") == 1  # d only: c is ambiguous now
    assert (await _store(store_url, queue="default").status()).counts["pending"] == 1
    assert (await _store(store_url, queue="other").status()).counts == {}


async def test_stores_opening_an_old_table_together_upgrade_it_once(store_url: str) -> None:
    await anyio.to_thread.run_sync(_create_v1, store_url)
    statuses = []

    async def look() -> None:
        statuses.append((await _store(store_url).status()).counts)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(look)
    assert statuses == [{"done": 1, "pending": 1, "failed": 1, "ambiguous": 2}] * 4


async def test_a_newer_schema_is_refused(store_url: str) -> None:
    store = _store(store_url)
    await store.status()  # creates the table at this version

    def bump(conn: Any) -> None:
        conn.execute("UPDATE nanobanana_schema SET version = version + 1")

    await store._once(bump)
    with pytest.raises(StoreError, match=r"newer nanobanana-async .* upgrade nanobanana-async"):
        await _store(store_url).status()


async def test_queues_share_a_database_without_seeing_each_other(store_url: str) -> None:
    nightly, adhoc = _store(store_url, queue="nightly"), _store(store_url, queue="ad-hoc.1")
    assert nightly.url == adhoc.url  # one database
    same = [Job(f"a lamp, take {i}", id=f"lamp-{i}") for i in range(4)]
    assert await nightly.add(same) == 4
    assert await adhoc.add(same[:2]) == 2  # the same ids, another queue: other jobs
    emulator = Emulator()
    async with AsyncNanoBanana("sk-test", transport=emulator.transport()) as client:
        report = await client.run_worker(nightly, concurrency=2)
        assert report.succeeded == 4
        batch = await client.run_batch(same, journal=_store(store_url, queue="ad-hoc.1"))
    assert batch.resumed == 0
    assert batch.succeeded == 4
    assert (await nightly.status()).counts == {"done": 4}
    assert (await adhoc.status()).counts == {"done": 4}
    assert (await _store(store_url).status()).counts == {}
    assert emulator.stats.generations == 8
