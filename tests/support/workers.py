"""Store workers in processes of their own, for tests that kill them or their database.

``cli_worker`` runs ``nanobanana worker``; ``script_worker`` runs
``tests/batch/stores/worker_process.py`` (``run_worker`` on a chosen event loop). Both talk to
an emulator at ``base_url`` with the key ``key``; ``reaped`` kills what is still running when
the block ends.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

__all__ = ["cli_worker", "reaped", "script_worker"]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env(key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    env.update(NANOBANANA_API_KEY=key, PYTHONUNBUFFERED="1", COLUMNS="160")
    return env


def _start(argv: list[str], key: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env=_env(key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_worker(url: str, base_url: str, key: str, *args: str) -> subprocess.Popen[str]:
    """``nanobanana worker --store URL --base-url BASE_URL ARGS``."""
    return _start(
        ["nanobanana_async", "worker", "--store", url, "--base-url", base_url, *args], key
    )


def script_worker(
    url: str, base_url: str, key: str, backend: str, concurrency: int, *extra: str
) -> subprocess.Popen[str]:
    """``run_worker`` on ``backend`` (see ``worker_process.py`` for ``extra``)."""
    return _start(
        [
            "tests.batch.stores.worker_process",
            url,
            base_url,
            backend,
            str(concurrency),
            *extra,
        ],
        key,
    )


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen[str]]) -> Iterator[None]:
    """Kill and reap the processes still running when the block ends."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
