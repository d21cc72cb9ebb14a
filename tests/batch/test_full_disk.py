"""A journal on a disk that fills up: a real, tiny tmpfs mounted by the test.

The disk fills while a job's line is being written: the write is torn. The batch must fail
with an SDK error saying so in one line (never a bare ``OSError``), and the rerun, once there
is space again, must treat the torn job as "may have been charged" (ambiguous: skipped, not
sent again), never as absent. The emulator's ledger counts the generations: 12 prompts, 12
generations (the old journal re-sent the torn job: 13).

Mounting needs root (CI runs as root); elsewhere the tests are skipped, saying so.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from nanobanana_async import AsyncNanoBanana, NanoBananaError, RetryPolicy
from nanobanana_async.batch.stores import StoreError
from nanobanana_async.emulator import Emulator
from tests.cli.test_cli import cli_env, run_cli, write

KEY = "nb-disk-0123456789abcdefXYZ"
PAGE = 4096
PROMPTS = [f"a prompt on a full disk, number {i}" for i in range(12)]


class TinyDisk:
    """A tmpfs of two pages; ``fill()`` leaves one page free for the journal."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        self.filler.write_bytes(b"x" * PAGE)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: pathlib.Path) -> Iterator[TinyDisk]:
    path = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={2 * PAGE}", "tmpfs", str(path)],
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


def client(emulator: Emulator) -> AsyncNanoBanana:
    return AsyncNanoBanana(
        KEY,
        base_url="https://api.test",
        transport=emulator.transport(),
        retry_policy=RetryPolicy(initial_delay=0.001, max_delay=0.01),
    )


@pytest.mark.anyio
async def test_a_full_disk_under_the_jsonl_journal(anyio_backend: str, disk: TinyDisk) -> None:
    emulator = Emulator(keys={KEY: 10_000}, seed=8)
    journal = disk.path / "run.jsonl"
    disk.fill()
    failure: NanoBananaError | None = None
    async with client(emulator) as api:
        try:
            await api.run_batch(PROMPTS, concurrency=1, journal=journal)
        except NanoBananaError as exc:  # an OSError would fail the test as itself
            failure = exc
    assert isinstance(failure, StoreError)
    message = str(failure)
    assert "\n" not in message
    assert str(journal) in message
    assert "No space left on device" in message
    assert "may have been charged" in message
    torn = journal.read_bytes()
    assert not torn.endswith(b"\n")  # the disk filled in the middle of a line
    generated = emulator.stats.generations
    assert 0 < generated < len(PROMPTS)

    disk.free()
    async with client(emulator) as api:
        again = await api.run_batch(PROMPTS, concurrency=1, journal=journal)
    # The torn job may have been charged: it is skipped as ambiguous, never paid again.
    assert emulator.stats.generations == len(PROMPTS)
    assert emulator.stats.duplicate_charges == 0
    assert again.resumed == generated - 1
    assert again.succeeded == len(PROMPTS) - 1
    (unsure,) = [r for r in again.results if r.status == "skipped"]
    assert unsure.reason is not None
    assert "ambiguous" in unsure.reason


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
