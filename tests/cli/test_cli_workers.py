"""``nanobanana worker`` processes as an operator runs them: sharing an output directory, and
ending when their budget runs out. The emulator serves on a loopback socket from the test
process, so its ledger sees every process and outlives them."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import anyio
import httpx
import pytest

from nanobanana_async import Job, open_store
from nanobanana_async.batch.stores import SqlStore
from nanobanana_async.emulator import Emulator, RunningEmulator, serve
from tests.cli.test_cli import cli_env, run_cli

KEY = "sk-workers-0123456789abcdef"
BALANCE = 10_000


@pytest.fixture
def server() -> Iterator[RunningEmulator]:
    pytest.importorskip("uvicorn")
    with serve(Emulator(keys={KEY: BALANCE}, seed=5), "127.0.0.1", 0) as running:
        yield running


def _store(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


def _worker(url: str, server: RunningEmulator, cwd: pathlib.Path, *args: str) -> str:
    env = cli_env(NANOBANANA_API_KEY=KEY, NANOBANANA_BASE_URL=server.base_url)
    proc = run_cli("worker", "--store", url, *args, cwd=cwd, env=env)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_workers_sharing_an_output_directory_never_share_a_file(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    # Job "two" (two images) and job "two-1" run in two worker processes writing into one
    # directory: three images paid for, three files, each job pointing at its own.
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = _store(url)
    anyio.run(store.add, [Job("two owls", id="two", num=2)])
    _worker(url, server, tmp_path, "-o", "images")
    anyio.run(store.add, [Job("a heron", id="two-1"), Job("a wren", id="Two")])
    _worker(url, server, tmp_path, "-o", "images")

    rows = {job_id: anyio.run(store.get, job_id) for job_id in ("two", "two-1", "Two")}
    # Paths as the workers recorded them, relative to their working directory.
    files = [tmp_path / f for row in rows.values() if row is not None for f in row["files"]]
    assert len(files) == 4 == server.emulator.stats.images_generated
    assert len({f.name.casefold() for f in files}) == 4
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(f.name for f in files)
    # Every file holds the image its own job was answered with (the emulator's images differ
    # per prompt), none overwritten by another job's.
    for row in rows.values():
        assert row is not None
        for image_url, path in zip(row["urls"], row["files"], strict=True):
            assert (tmp_path / path).read_bytes() == httpx.get(image_url).content
