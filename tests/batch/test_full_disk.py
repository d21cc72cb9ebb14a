"""A journal on a disk that fills up: a real, tiny tmpfs mounted by the test.

The disk fills while a job's line is being written: the write is torn. The batch must fail
with an SDK error saying so in one line (never a bare ``OSError``), and the rerun, once there
is space again, must treat the torn job as "may have been charged" (ambiguous: skipped, not
sent again), never as absent. The emulator's ledger counts the generations: 12 prompts, 12
generations (the old journal re-sent the torn job: 13).

Mounting needs root (CI runs as root); elsewhere the tests are skipped, saying so.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from nanobanana_async import NanoBananaError
from nanobanana_async.batch.runner import single_error
from nanobanana_async.batch.stores import JsonlStore, StoreError
from nanobanana_async.emulator import Emulator, Faults
from tests.cli.test_cli import cli_env, run_cli, write
from tests.support.batches import consuming, until
from tests.support.clients import emulated

KEY = "nb-disk-0123456789abcdefXYZ"
PAGE = 4096
PROMPTS = [f"a prompt on a full disk, number {i}" for i in range(12)]


class TinyDisk:
    """A small tmpfs; ``fill()`` leaves one page free (or none: ``to_the_brim``)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self, *, to_the_brim: bool = False) -> None:
        if not to_the_brim:
            free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
            self.filler.write_bytes(b"x" * (free - PAGE))
            return
        # While a run writes beside it: a page at a time, until nothing fits.
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"x" * PAGE)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


def mount_tmpfs(tmp_path: pathlib.Path, size: int) -> Iterator[TinyDisk]:
    path = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "a full disk needs a tmpfs the test can mount (root with CAP_SYS_ADMIN, as in CI): "
            f"mount said {mounted.stderr.strip() or mounted.returncode}"
        )
    try:
        yield TinyDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def disk(tmp_path: pathlib.Path) -> Iterator[TinyDisk]:
    """Two pages: one for the journal once filled."""
    yield from mount_tmpfs(tmp_path, 2 * PAGE)


@pytest.fixture
def roomy_disk(tmp_path: pathlib.Path) -> Iterator[TinyDisk]:
    """4 MiB: a SQLite journal (its WAL grows by pages) runs until the test fills it."""
    yield from mount_tmpfs(tmp_path, 4 << 20)


@pytest.mark.anyio
async def test_a_full_disk_under_the_jsonl_journal(anyio_backend: str, disk: TinyDisk) -> None:
    emulator = Emulator(keys={KEY: 10_000}, seed=8)
    journal = disk.path / "run.jsonl"
    disk.fill()
    failure: NanoBananaError | None = None
    async with emulated(emulator, KEY) as api:
        try:
            await api.run_batch(PROMPTS, concurrency=1, journal=journal)
        except NanoBananaError as exc:  # an OSError would fail the test as itself
            failure = exc
    assert isinstance(failure, StoreError)
    message = str(failure)
    assert "\n" not in message
    assert str(journal) in message
    assert "No space left on device" in message
    torn = journal.read_bytes()
    assert not torn.endswith(b"\n")  # the disk filled in the middle of a line
    generated = emulator.stats.generations
    assert 0 < generated < len(PROMPTS)

    disk.free()
    async with emulated(emulator, KEY) as api:
        again = await api.run_batch(PROMPTS, concurrency=1, journal=journal)
    # The torn line's job is whole in the spool: put back, it resumes, never paid again.
    assert emulator.stats.generations == len(PROMPTS)
    assert emulator.stats.duplicate_charges == 0
    assert again.resumed == generated
    assert again.succeeded == len(PROMPTS)
    spool = JsonlStore(journal).spool
    assert f"kept in the spool {spool.path}" in message
    assert not spool.pending()


@pytest.mark.anyio
async def test_results_in_flight_when_the_jsonl_disk_fills_are_spooled(
    anyio_backend: str, disk: TinyDisk
) -> None:
    # Found by the store checker: at concurrency 4 the jobs in flight when the disk filled
    # finished after it; their lines could not be written, and the rerun paid for them again.
    emulator = Emulator(keys={KEY: 10_000}, faults=Faults(latency=(0.01, 0.05)), seed=11)
    journal = disk.path / "run.jsonl"
    disk.fill()
    async with emulated(emulator, KEY) as api:
        with pytest.raises(StoreError, match="No space left on device"):
            await api.run_batch(PROMPTS, concurrency=4, journal=journal)
    generated = emulator.stats.generations
    kept = JsonlStore(journal).spool.count() if hasattr(JsonlStore, "spool") else 0

    disk.free()
    async with emulated(emulator, KEY) as api:
        again = await api.run_batch(PROMPTS, concurrency=4, journal=journal)
    assert emulator.stats.duplicate_charges == 0
    assert emulator.stats.generations == len(PROMPTS)
    assert again.resumed == generated
    assert again.succeeded == len(PROMPTS)
    assert kept >= 2  # the torn line's job, and at least one that finished after it
    assert not JsonlStore(journal).spool.pending()


@pytest.mark.anyio
async def test_a_job_cancelled_on_a_full_jsonl_disk_stays_ambiguous(
    anyio_backend: str, disk: TinyDisk
) -> None:
    # A job cancelled while its request was out may have been charged (the server charges
    # clients that hang up); the journal's disk is full, so its "ambiguous" line goes to the
    # spool, and the rerun skips it instead of paying for it again.
    emulator = Emulator(
        keys={KEY: 10_000}, faults=Faults(latency=30.0, charge_on_hangup_rate=1.0), seed=12
    )
    journal = disk.path / "run.jsonl"
    disk.fill(to_the_brim=True)
    async with emulated(emulator, KEY) as api:
        run = api.batch(PROMPTS[:2], concurrency=2, journal=journal)
        async with consuming(run) as results:
            await until(lambda: emulator.stats.in_flight == 2)
            run.stop("test", grace=0)
        report = run.report(results)
    await until(lambda: emulator.stats.in_flight == 0)
    assert 10_000 - emulator.balance(KEY) == 4  # charged on hang-up
    assert report.credits_may_have_been_spent == 4
    assert journal.read_bytes() == b""  # nothing fitted

    disk.free()
    emulator.faults = Faults()
    async with emulated(emulator, KEY) as api:
        again = await api.run_batch(PROMPTS[:2], journal=journal)
    assert emulator.stats.generate_requests == 2  # neither was sent again
    assert again.skipped == 2
    assert all("ambiguous" in (r.reason or "") for r in again.results)
    assert not JsonlStore(journal).spool.pending()


def test_the_cli_on_a_full_disk_says_so_in_one_line(tmp_path: pathlib.Path, disk: TinyDisk) -> None:
    prompts = write(tmp_path / "p.txt", "".join(f"{p}\n" for p in PROMPTS))
    disk.fill()
    for journal in (str(disk.path / "run.jsonl"), f"sqlite:///{disk.path / 'run.db'}"):
        proc = run_cli(
            "batch", str(prompts), "--emulator", "--yes", "-c", "1", "--journal", journal,
            cwd=tmp_path, env=cli_env(),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, proc.stderr
        assert "full" in errors[0] or "No space left" in errors[0], errors[0]
        for leftover in disk.path.iterdir():
            if leftover != disk.filler:
                os.unlink(leftover)


@pytest.mark.slow
def test_the_default_sqlite_journal_on_a_disk_that_fills_mid_run(
    tmp_path: pathlib.Path, roomy_disk: TinyDisk
) -> None:
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import serve
    from tests.cli.test_cli import command, store_counts, wait_for_done

    # The server charges requests whose client went away: what the run could not record
    # may still have been paid for, and must then never be paid again.
    emulator = Emulator(
        keys={KEY: 10_000}, faults=Faults(latency=0.2, charge_on_hangup_rate=1.0), seed=9
    )
    prompts = write(tmp_path / "p.txt", "".join(f"{p}\n" for p in PROMPTS * 2))
    journal = roomy_disk.path / "run.db"
    env = cli_env(NANOBANANA_API_KEY=KEY)
    with serve(emulator) as server:
        args = ["batch", str(prompts), "--base-url", server.base_url, "--yes", "-c", "2"]
        args += ["--journal", f"sqlite:///{journal}"]
        proc = subprocess.Popen(
            command(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_done(journal, 3, proc)
        roomy_disk.fill(to_the_brim=True)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, err
        assert "database or disk is full" in errors[0]

        roomy_disk.free()
        rerun = subprocess.run(
            command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert "Traceback" not in rerun.stderr
        counts = store_counts(journal)
        stats = emulator.stats
        # No job paid twice: each was sent at most once over both runs, and the ledger is
        # what the journal says was spent plus what may have been.
        assert stats.duplicate_charges == 0
        assert stats.generate_requests <= len(PROMPTS) * 2
        assert sum(counts.values()) == len(PROMPTS) * 2
        assert set(counts) <= {"done", "ambiguous", "claimed", "sending"}
        charged = 10_000 - emulator.balance(KEY)
        assert charged >= 2 * counts["done"]
        print(f"\nfull disk, SQLite: {errors[0]}; after the rerun {counts}, {charged} charged")


@pytest.mark.anyio
async def test_a_full_disk_under_the_images_fails_those_jobs_only(
    anyio_backend: str, tmp_path: pathlib.Path, roomy_disk: TinyDisk
) -> None:
    emulator = Emulator(keys={KEY: 10_000}, seed=10)
    journal = f"sqlite:///{tmp_path / 'run.db'}"
    roomy_disk.fill(to_the_brim=True)
    async with emulated(emulator, KEY) as api:
        report = await api.run_batch(PROMPTS[:4], journal=journal, download_dir=roomy_disk.path)
    assert report.failed == 4
    assert all("No space left on device" in str(r.error) for r in report.results)
    # Generated and paid for: counted, and journaled with their URLs.
    assert report.credits_spent == 10_000 - emulator.balance(KEY) == 8
    roomy_disk.free()
    async with emulated(emulator, KEY) as api:
        again = await api.run_batch(PROMPTS[:4], journal=journal, download_dir=roomy_disk.path)
    assert again.succeeded == again.resumed == 4
    assert emulator.stats.generations == 4
    assert len([p for p in roomy_disk.path.iterdir() if p.suffix == ".png"]) == 4


def test_several_jobs_failing_on_one_full_disk_are_one_error() -> None:
    # Two jobs' journal writes fail together (concurrency 2 on a full disk): the caller gets
    # one StoreError, as it would for one, never an ExceptionGroup (a traceback in the CLI).
    def full(job: str) -> StoreError:
        return StoreError(f"cannot write the journal: No space left on device ({job})")

    nested = ExceptionGroup("run", [full("a"), ExceptionGroup("workers", [full("b")])])
    with pytest.raises(StoreError, match=r"\(a\)"), single_error():
        raise nested
    mixed = ExceptionGroup("run", [full("a"), ValueError("a bug")])
    with pytest.raises(ExceptionGroup), single_error():
        raise mixed  # not all the SDK's: nothing is hidden
