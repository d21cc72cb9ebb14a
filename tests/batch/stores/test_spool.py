"""The spool put back into the store, whatever happened to the rows meanwhile.

Results are spooled for real: a session whose result writes the store refuses (injected
faults on its real connections), then the rows are moved on as the reaper, an operator
(``retry --ambiguous``) or another worker would, and the spool is recovered.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from nanobanana_async import Job
from nanobanana_async.batch.results import JobResult
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.batch.stores.session import SqlSession
from nanobanana_async.batch.stores.spool import Spool
from nanobanana_async.models import Generation
from tests.cli.test_cli import assert_clean_error, run_cli
from tests.support.store_faults import StoreFaults

pytestmark = pytest.mark.anyio


def _sql(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


def _done(job_id: str, url: str = "https://img.test/x.png", uncertain: int = 0) -> JobResult:
    generation = Generation((url,), "gemini-2.5-flash-image", "1:1", 1, 2, 0.1)
    return JobResult(
        0,
        Job(f"prompt of {job_id}"),
        "succeeded",
        job_id,
        generation=generation,
        credits=2,
        attempts=1,
        credits_may_have_been_spent=uncertain,
    )


async def _spooled_session(store: SqlStore, ids: list[str]) -> SqlSession:
    """A worker session that sent ``ids`` and whose results the store refused: spooled."""
    faults = StoreFaults()
    faults.install(store)
    await store.add(Job(f"prompt of {i}", id=i) for i in ids)
    session = await store.connect(worker=True)
    assert isinstance(session, SqlSession)
    for job in await session.claim(len(ids)):
        assert await session.sending(job.id, job.idempotency_key, 2)
    faults.fail(1000, match="SET state = 'done'", transient=False)
    for job_id in ids:
        await session.record(_done(job_id))
    faults.clear()
    assert session.spooled == len(ids)
    return session


async def _set(store: SqlStore, sql: str, **params: Any) -> None:
    text = store.dialect.sql(sql)
    await store._once(lambda conn: conn.execute(text, params))


async def test_the_spool_goes_back_whatever_the_rows_went_through(store_url: str) -> None:
    store = _sql(store_url)
    ids = ["sending", "ambiguous", "retried", "held", "regenerated"]
    session = await _spooled_session(store, ids)
    lines = store.spool.path.read_text().splitlines()
    assert len(lines) == 5
    assert all(json.loads(line)["op"] == "done" for line in lines)
    # The session ends: its rows still sending turn ambiguous, as a reaper would make them.
    await session.close()
    spooled = store.spool.path.read_bytes()
    store.spool.path.write_bytes(b"")  # out of the way while the rows move on
    # One as if the worker had been killed before it closed; three put back to pending by
    # an operator.
    await _set(store, "UPDATE {t} SET state = 'sending' WHERE id = 'sending'")
    await _set(
        store,
        "UPDATE {t} SET state = 'pending', reserved = 0, lease_owner = NULL "
        "WHERE id IN ('retried', 'held', 'regenerated')",
    )
    # ... another worker holds one right now, and has generated another one again.
    other = await store.connect(worker=True)
    assert isinstance(other, SqlSession)
    claimed = {job.id: job for job in await other.claim(5)}
    assert set(claimed) == {"retried", "held", "regenerated"}
    assert await other.sending("regenerated", claimed["regenerated"].idempotency_key, 2)
    await other.record(_done("regenerated", url="https://img.test/second.png"))
    await other.release("retried")  # back to pending
    store.spool.path.write_bytes(spooled)

    recovered = await store.recover()
    assert (recovered.applied, recovered.kept, recovered.refused, recovered.foreign) == (4, 1, 0, 0)
    assert len(store.spool.path.read_text().splitlines()) == 1  # "held" waits for its worker
    rows = {row["id"]: row async for row in store.rows()}
    assert {i: rows[i]["state"] for i in ids} == {
        "sending": "done",
        "ambiguous": "done",
        "retried": "done",
        "held": "claimed",
        "regenerated": "done",
    }
    assert rows["sending"]["urls"] == ["https://img.test/x.png"]
    assert rows["ambiguous"]["uncertain"] == 0  # its own reservation: the spooled result
    # Generated twice (the second time after an operator's retry): the first generation's
    # credits may have been spent too.
    assert rows["regenerated"]["urls"] == ["https://img.test/second.png"]
    assert rows["regenerated"]["uncertain"] == 2
    status = await store.status()
    assert status.credits_spent == 4 * 2
    assert status.spooled == 1

    await other.release("held")
    later = await store.recover()
    assert (later.applied, later.left) == (1, 0)
    assert store.spool.path.read_text() == ""
    assert (await store.status()).counts == {"done": 5}
    await other.close()


async def test_a_spooled_result_already_in_the_store_is_not_counted_twice(store_url: str) -> None:
    store = _sql(store_url)
    session = await _spooled_session(store, ["once"])
    entry = json.loads(store.spool.path.read_text())
    await session.close()
    assert (await store.recover()).applied == 1
    # The same write again (its commit's answer was lost, so it was spooled after all).
    Spool(store.spool.path).append([entry])
    assert (await store.recover()).applied == 1
    row = await store.get("once")
    assert row is not None
    assert (row["state"], row["credits"], row["uncertain"]) == ("done", 2, 0)


async def test_a_spool_of_another_store_is_left_alone(
    store_url: str, tmp_path: pathlib.Path
) -> None:
    store = _sql(store_url)
    await _spooled_session(store, ["mine"])
    foreign = tmp_path / "foreign.jsonl"
    entry = json.loads(store.spool.path.read_text())
    Spool(foreign).append([dict(entry, store_id="0" * 32)])
    result = await store.recover(foreign)
    assert (result.applied, result.foreign, result.left) == (0, 1, 1)
    assert len(foreign.read_text().splitlines()) == 1


async def test_opening_a_session_puts_the_spool_back(store_url: str) -> None:
    store = _sql(store_url)
    session = await _spooled_session(store, ["a", "b"])
    await session.close()
    assert (await store.status()).counts == {"ambiguous": 2}
    fresh = _sql(store_url)  # another process's store object: the same spool, by store id
    later = await fresh.connect(worker=True)
    await later.close()
    assert (await fresh.status()).counts == {"done": 2}


def test_jobs_recover_on_the_command_line(tmp_path: pathlib.Path, store_url: str) -> None:
    import anyio

    store = _sql(store_url)

    async def prepare() -> None:
        session = await _spooled_session(store, ["x", "y"])
        await session.close()

    anyio.run(prepare)
    status = run_cli("jobs", "status", "--store", store_url, cwd=tmp_path)
    assert "2 result(s) in this machine's spool" in status.stdout
    assert "nanobanana jobs recover --store" in status.stdout
    data = json.loads(
        run_cli("jobs", "status", "--store", store_url, "--json", cwd=tmp_path).stdout
    )
    assert data["spooled"] == 2
    assert data["credits_may_have_been_spent"] == 4
    done = run_cli("jobs", "recover", "--store", store_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Put 2 spooled result(s)" in done.stderr
    again = run_cli("jobs", "recover", "--store", store_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Nothing to recover" in again.stderr
    missing = run_cli("jobs", "recover", "--store", store_url, "--spool", "nope", cwd=tmp_path)
    assert_clean_error(missing, 2, "--spool nope: no such file")
    after = json.loads(
        run_cli("jobs", "status", "--store", store_url, "--json", cwd=tmp_path).stdout
    )
    assert after["counts"]["done"] == 2
    assert after["spooled"] == 0
