"""``nanobanana jobs ...``, ``nanobanana worker`` and ``batch --journal sqlite:///``, as a user
runs them: subprocesses on real files and a real Postgres server."""

from __future__ import annotations

import json
import pathlib

import anyio
import pytest

from nanobanana_async import APIConnectionError, Job, JobResult, open_store
from nanobanana_async.batch.stores import SqlStore
from tests.cli.test_cli import assert_clean_error, run_cli, write

PROMPTS = "a red fox\nan owl at night\na heron\n"


def _sql(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_add_work_status_export_download(tmp_path: pathlib.Path, store: str) -> None:
    jobs = write(tmp_path / "jobs.txt", PROMPTS)
    added = run_cli("jobs", "add", "--store", store, str(jobs), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "Added 3 job(s)" in added.stderr
    again = run_cli("jobs", "add", "--store", store, str(jobs), cwd=tmp_path)
    assert "Added 0 job(s)" in again.stderr
    assert "3 already in the store" in again.stderr

    worker = run_cli("worker", "--store", store, "--emulator", "-c", "2", cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr
    assert "3 job(s) pending" in worker.stderr
    assert "Store: 3 done" in worker.stderr

    status = run_cli("jobs", "status", "--store", store, "--json", cwd=tmp_path)
    data = json.loads(status.stdout)
    assert data["counts"]["done"] == 3
    assert data["credits_spent"] == 6
    assert data["ambiguous"] == []
    table = run_cli("jobs", "status", "--store", store, cwd=tmp_path)
    assert "credits spent" in table.stdout

    exported = run_cli("jobs", "export", "--store", store, "-o", "out.jsonl", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == PROMPTS.splitlines()
    assert {r["status"] for r in records} == {"succeeded"}
    assert all(len(r["urls"]) == 1 and r["credits"] == 2 for r in records)

    got = run_cli("jobs", "download", "--store", store, "-o", "images", "--emulator", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == sorted(f"{r['id']}.png" for r in records)
    twice = run_cli(
        "jobs", "download", "--store", store, "-o", "images", "--emulator", cwd=tmp_path
    )
    assert "Downloaded 0 image(s)" in twice.stderr
    row = anyio.run(_sql(store).get, records[0]["id"])
    assert row is not None
    assert row["files"] == [str(tmp_path / "images" / f"{records[0]['id']}.png")]


async def _leave_ambiguous(url: str) -> None:
    store = _sql(url)
    await store.add([Job("a kite", id="kite"), Job("a lamp", id="lamp")])
    session = await store.connect(worker=True)
    [first, *_] = await session.claim(1)
    assert await session.sending(first.id, first.idempotency_key, 2)
    await session.close()  # as a worker that failed mid-send: the job may have been charged


def test_retry_ambiguous_asks_first(tmp_path: pathlib.Path, store: str) -> None:
    anyio.run(_leave_ambiguous, store)
    status = run_cli("jobs", "status", "--store", store, cwd=tmp_path)
    assert "kite" in status.stdout
    assert "retry --ambiguous" in status.stdout
    refused = run_cli("jobs", "retry", "--store", store, "--ambiguous", cwd=tmp_path)
    assert_clean_error(refused, 2, "may have been charged", "--yes")
    nothing = run_cli("jobs", "retry", "--store", store, cwd=tmp_path)
    assert_clean_error(nothing, 2, "--ambiguous")
    done = run_cli("jobs", "retry", "--store", store, "--ambiguous", "--yes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 job(s) back to pending" in done.stderr
    counts = anyio.run(_sql(store).status).counts
    assert counts == {"pending": 2}


async def _lose_an_answer(url: str) -> None:
    store = _sql(url)
    await store.add([Job("a kite", id="kite"), Job("a lamp", id="lamp")])
    session = await store.connect(worker=True)
    [first, second] = await session.claim(2)
    assert await session.sending(first.id, first.idempotency_key, 2)
    lost = APIConnectionError("connection lost after sending", may_have_been_charged=True)
    await session.record(
        JobResult(0, Job("a kite"), "failed", "kite", error=lost, credits_may_have_been_spent=2)
    )
    assert await session.sending(second.id, second.idempotency_key, 2)
    await session.record(JobResult(1, Job("a lamp"), "failed", "lamp", error=None))
    await session.close()


def test_retry_failed_never_resends_a_lost_answer(tmp_path: pathlib.Path, store: str) -> None:
    anyio.run(_lose_an_answer, store)
    exported = run_cli("jobs", "export", "--store", store, "-o", "-", cwd=tmp_path)
    records = {r["id"]: r for r in map(json.loads, exported.stdout.splitlines())}
    assert (records["kite"]["status"], records["kite"]["credits_may_have_been_spent"]) == (
        "ambiguous",
        2,
    )
    assert records["lamp"]["status"] == "failed"
    done = run_cli("jobs", "retry", "--store", store, "--failed", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 job(s) back to pending" in done.stderr
    counts = anyio.run(_sql(store).status).counts
    assert counts == {"pending": 1, "ambiguous": 1}


def test_batch_with_a_sqlite_journal_resumes(tmp_path: pathlib.Path) -> None:
    jobs = write(tmp_path / "jobs.txt", PROMPTS)
    args = ("batch", str(jobs), "--journal", "sqlite:///run.db", "--emulator", "--yes")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.split()) == 3  # the URLs
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "3 of 3 jobs already done in sqlite:///run.db" in second.stderr
    assert (tmp_path / "run.db").exists()


def test_store_mistakes_are_one_line(tmp_path: pathlib.Path) -> None:
    jsonl = run_cli("jobs", "status", "--store", "run.jsonl", cwd=tmp_path)
    assert_clean_error(jsonl, 2, "sqlite:///path or postgresql://")
    scheme = run_cli("worker", "--store", "redis://localhost", "--emulator", cwd=tmp_path)
    assert_clean_error(scheme, 2, "unknown job store scheme 'redis'")
    missing = run_cli("jobs", "status", cwd=tmp_path)
    assert_clean_error(missing, 2, "--store")
    url = "postgresql://bob:hunter2@127.0.0.1:9/jobs"
    down = run_cli("jobs", "status", "--store", url, cwd=tmp_path)
    assert_clean_error(down, 1, "job store postgresql://bob:***@127.0.0.1:9/jobs")
    assert "hunter2" not in down.stderr + down.stdout


@pytest.mark.parametrize(
    "args", [("status",), ("export", "-o", "out.jsonl"), ("retry", "--failed")], ids=lambda a: a[0]
)
def test_reading_commands_refuse_a_postgres_database_without_a_job_store(
    tmp_path: pathlib.Path, pg_url: str, args: tuple[str, ...]
) -> None:
    # A database that exists but holds no job store (a wrong database name in the URL) is not
    # read as an empty store: it is refused, and nothing is created in it.
    proc = run_cli("jobs", *args, "--store", pg_url, cwd=tmp_path)
    assert_clean_error(proc, 1, "no job store in postgresql://", "nothing was created")
    assert list(tmp_path.iterdir()) == []

    async def tables() -> int:
        import psycopg

        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

    assert anyio.run(tables) == 0
    # Once jobs are added there, the same command reads them.
    write(tmp_path / "jobs.txt", "a fox\n")
    assert (
        run_cli(
            "jobs", "add", str(tmp_path / "jobs.txt"), "--store", pg_url, cwd=tmp_path
        ).returncode
        == 0
    )
    status = run_cli("jobs", "status", "--json", "--store", pg_url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["pending"] == 1
