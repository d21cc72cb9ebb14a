"""The batch journal: what a line holds, and resuming a batch from it without paying twice."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from nanobanana_async import InvalidRequestError, Job
from nanobanana_async.batch.journal import JobIds, Journal, content_id
from nanobanana_async.emulator import Emulator, Faults
from tests.support.clients import emulated

pytestmark = pytest.mark.anyio

KEY = "nb-journal-0123456789abcdefJK"
FIELDS = {
    "id",
    "index",
    "status",
    "prompt",
    "model",
    "image_size",
    "num",
    "urls",
    "credits",
    "attempts",
    "error",
}


def lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


JOBS: list[Job | str] = [
    "a lighthouse at dusk",
    Job("two foxes", num=2, model="gemini-3.1-flash-image-preview", image_size="21:9"),
    Job("named", id="my-job"),
    "a lighthouse at dusk",  # a duplicate prompt is a second job
]


async def test_a_line_per_job_with_the_documented_fields(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=1)
    journal = tmp_path / "run.jsonl"
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(JOBS, journal=journal)
    records = sorted(lines(journal), key=lambda r: r["index"])
    assert len(records) == 4
    for record, result in zip(records, report.results, strict=True):
        assert set(record) >= FIELDS
        assert record["id"] == result.id
        assert record["index"] == result.index
        assert record["status"] == "succeeded"
        assert result.job is not None
        assert record["prompt"] == result.job.prompt
        assert record["model"] == result.job.model
        assert record["image_size"] == result.job.image_size
        assert record["num"] == result.job.num
        assert result.generation is not None
        assert record["urls"] == list(result.generation.urls)
        assert len(record["urls"]) == result.job.num
        assert record["credits"] == result.credits
        assert record["attempts"] == result.attempts == 1
        assert record["error"] is None
    assert [r["credits"] for r in records] == [2, 8, 2, 2]
    assert records[2]["id"] == "my-job"
    # Two equal prompts are two jobs with two ids.
    assert records[0]["id"] != records[3]["id"]
    assert records[3]["id"] == records[0]["id"] + "-2"
    assert emulator.stats.generate_requests == 4
    assert KEY not in journal.read_text()


async def test_a_failed_job_is_journaled_with_its_error(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(server_error_rate=1.0), seed=2)
    journal = tmp_path / "run.jsonl"
    async with emulated(emulator, KEY) as client:
        await client.run_batch(["doomed"], journal=journal, max_retries=1)
    (record,) = lines(journal)
    assert set(record) >= FIELDS
    assert record["status"] == "failed"
    assert record["urls"] == []
    assert record["credits"] == 0
    assert record["attempts"] == 2
    assert isinstance(record["error"], str)
    assert record["error"]


async def test_a_rerun_sends_nothing_and_reports_every_job_resumed(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.0, 0.005)), seed=3)
    journal = tmp_path / "run.jsonl"
    jobs = [*JOBS, *(f"more {i}" for i in range(30))]
    async with emulated(emulator, KEY) as client:
        first = await client.run_batch(jobs, concurrency=8, journal=journal)
        assert first.succeeded == len(jobs)
        requests, balance = emulator.stats.generate_requests, emulator.balance(KEY)
        written = journal.read_bytes()
        second = await client.run_batch(jobs, concurrency=8, journal=journal)
    assert emulator.stats.generate_requests == requests
    assert emulator.balance(KEY) == balance
    assert second.succeeded == second.resumed == len(jobs)
    assert all(r.resumed and r.attempts == 0 and r.credits == 0 for r in second.results)
    assert second.credits_spent == 0
    # The earlier URLs come back, and nothing was appended.
    assert [r.generation.urls if r.generation else None for r in second.results] == [
        r.generation.urls if r.generation else None for r in first.results
    ]
    assert journal.read_bytes() == written


async def test_a_torn_last_line_makes_its_job_ambiguous(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    # A line torn by a kill or a full disk says its job was generated, or may have been:
    # never "absent", so never sent (and paid for) again without asking.
    emulator = Emulator(keys={KEY: 10**6}, seed=4)
    journal = tmp_path / "run.jsonl"
    jobs = [f"torn {i}" for i in range(10)]
    async with emulated(emulator, KEY) as client:
        await client.run_batch(jobs, concurrency=1, journal=journal)
        data = journal.read_bytes()
        # A kill in the middle of writing the last line.
        journal.write_bytes(data[: len(data) - 25])
        torn_id = lines_before_tear(data)[-1]["id"]
        before = emulator.stats.generate_requests
        second = await client.run_batch(jobs, concurrency=1, journal=journal)
        assert emulator.stats.generate_requests == before
        assert second.resumed == second.succeeded == 9
        (unsure,) = [r for r in second.results if not r.resumed]
        assert unsure.id == torn_id
        assert unsure.status == "skipped"
        assert unsure.reason is not None
        assert "ambiguous" in unsure.reason
        assert "may have been charged" in unsure.reason
        # Every line but the torn fragment parses.
        text = journal.read_text().splitlines()
        parsed = [json.loads(line) for line in text if line.endswith("}")]
        assert len(parsed) == len(text) - 1 == 9
        # Still ambiguous the next time, however many lines came after the torn one.
        third = await client.run_batch([*jobs, "torn 10"], concurrency=1, journal=journal)
        fourth = await client.run_batch([*jobs, "torn 10"], concurrency=1, journal=journal)
    assert emulator.stats.generate_requests == before + 1  # "torn 10" only
    assert third.resumed == 9
    assert fourth.resumed == 10
    assert [r.id for r in fourth.results if r.status == "skipped"] == [torn_id]


def lines_before_tear(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_a_rerun_after_failures_retries_only_the_failed(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(
        keys={KEY: 10**6}, faults=Faults(server_error_rate=0.4, latency=(0.0, 0.005)), seed=5
    )
    journal = tmp_path / "run.jsonl"
    jobs = [f"partly {i}" for i in range(40)] + ["partly 0", "partly 0"]
    async with emulated(emulator, KEY) as client:
        first = await client.run_batch(jobs, concurrency=8, journal=journal, max_retries=0)
        failed_ids = {r.id for r in first.results if r.status == "failed"}
        assert 0 < len(failed_ids) < len(jobs)
        emulator.faults = Faults()
        before, balance = emulator.stats.generate_requests, emulator.balance(KEY)
        second = await client.run_batch(jobs, concurrency=8, journal=journal)
    assert emulator.stats.generate_requests - before == len(failed_ids)
    assert balance - emulator.balance(KEY) == 2 * len(failed_ids) == second.credits_spent
    assert second.succeeded == len(jobs)
    assert {r.id for r in second.results if not r.resumed} == failed_ids
    assert second.resumed == len(jobs) - len(failed_ids)
    # The journal now holds a success for every id (the old failures stay as history).
    succeeded = {r["id"] for r in lines(journal) if r["status"] == "succeeded"}
    assert succeeded == {r.id for r in second.results}
    assert len(succeeded) == len(jobs)


async def test_a_job_id_resumes_only_the_job_it_named(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=6)
    journal = tmp_path / "run.jsonl"
    async with emulated(emulator, KEY) as client:
        await client.run_batch([Job("first wording", id="hero")], journal=journal)
        same = await client.run_batch([Job("first wording", id="hero")], journal=journal)
        # Issue 11, finding 13: same id, other fields. The journaled result is another job's:
        # never a silent match, and nothing is sent (the id may be a typo of the caller's).
        changed = await client.run_batch([Job("second wording", id="hero", num=2)], journal=journal)
    assert same.resumed == 1
    assert changed.resumed == 0
    (result,) = changed.results
    assert result.status == "failed"
    assert isinstance(result.error, InvalidRequestError)
    assert "'hero'" in str(result.error)
    assert "prompt, num" in str(result.error)
    assert emulator.stats.generate_requests == 1


def test_job_ids_count_occurrences_and_refuse_duplicate_explicit_ids() -> None:
    ids = JobIds()
    job = Job("same")
    assert ids.assign(job) == content_id(job)
    assert ids.assign(job) == content_id(job) + "-2"
    assert ids.assign(Job("same", num=2)) == content_id(Job("same", num=2))
    assert ids.assign(Job("x", id="a")) == "a"
    with pytest.raises(ValueError, match="duplicate job id"):
        ids.assign(Job("y", id="a"))
    assert content_id(Job("same")) == content_id(Job("same"))
    assert content_id(Job("same")) != content_id(Job("same", image_size="16:9"))


def test_journal_loading_skips_garbage_and_keeps_generated_jobs(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j.jsonl"
    ok = {"id": "a", "status": "succeeded", "urls": ["u"], "credits": 2, "attempts": 1}
    refetch_failed = {"id": "a", "status": "failed", "urls": [], "error": "download failed"}
    failed = {"id": "b", "status": "failed", "urls": [], "credits": 0}
    text = "\n".join(
        [json.dumps(ok), "not json", "[1, 2]", json.dumps(refetch_failed), json.dumps(failed)]
    )
    path.write_text(text + '\n{"id": "c", "stat')
    journal = Journal(path)
    try:
        resumable = journal.resumable("a")
        assert resumable is not None
        assert resumable.urls == ("u",)
        assert journal.resumable("b") is None  # failed: to be run again
        assert journal.resumable("c") is None  # torn
        journal.write({"id": "d", "status": "succeeded", "urls": ["v"]})
    finally:
        journal.close()
    # The torn fragment was closed off with a newline: the new line parses on its own.
    last = path.read_text().splitlines()[-1]
    assert json.loads(last)["id"] == "d"


async def test_lines_of_invalid_inputs_are_not_reported_as_garbage_on_rerun(
    anyio_backend: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=7)
    journal = tmp_path / "run.jsonl"
    jobs: list[Job | str] = ["fine", "", Job("a", id="d"), Job("b", id="d")]
    async with emulated(emulator, KEY) as client:
        first = await client.run_batch(jobs, journal=journal)
        with caplog.at_level("WARNING", logger="nanobanana_async"):
            second = await client.run_batch(jobs, journal=journal)
    assert [r.status for r in first.results] == ["succeeded", "failed", "succeeded", "failed"]
    assert [r.status for r in second.results] == [r.status for r in first.results]
    assert second.resumed == 2
    assert emulator.stats.generate_requests == 2
    assert [r.message for r in caplog.records if "journal" in r.message] == []
    # Garbage is still reported.
    with journal.open("a") as fh:
        fh.write("not json\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="nanobanana_async"):
        Journal(journal).close()
    assert any("is not a job record" in r.message for r in caplog.records)


async def test_a_rerun_with_downloads_fetches_only_missing_files(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=8)
    journal, out = tmp_path / "run.jsonl", tmp_path / "out"
    jobs: list[Job | str] = ["one", Job("two", num=2, id="two"), "three"]
    async with emulated(emulator, KEY) as client:
        first = await client.run_batch(jobs, journal=journal, download_dir=out)
        assert first.ok
        assert emulator.stats.images_served == 4
        second = await client.run_batch(jobs, journal=journal, download_dir=out)
        assert second.resumed == 3
        assert emulator.stats.images_served == 4  # all on disk: nothing fetched
        first.results[1].paths[0].unlink()
        third = await client.run_batch(jobs, journal=journal, download_dir=out)
    assert third.ok
    assert third.resumed == 3
    assert emulator.stats.generate_requests == 3
    assert emulator.stats.images_served == 4 + 2  # job "two" fetched again, nothing paid
    assert [r.paths for r in third.results] == [r.paths for r in first.results]
    assert all(p.exists() for r in third.results for p in r.paths)
