"""The money checker: random schedules of faults, budgets and interruptions, invariants after
every run (see :mod:`tests.checker.harness`), on asyncio and Trio, in-process and over a
loopback socket.

CI runs a bounded number of schedules; ``NANOBANANA_CHECKER_SCHEDULES=5000`` runs more
(schedules are numbered from ``NANOBANANA_CHECKER_FIRST``, default 0), and
``NANOBANANA_CHECKER_SEED=N`` replays one.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

from nanobanana_async.emulator import WireFaults, serve
from tests.checker.harness import Checker, RecordingEmulator
from tests.checker.schedule import draw

pytestmark = pytest.mark.anyio

KEY = "sk-checker-0123456789abcdef"


def seeds(default: int) -> list[int]:
    if "NANOBANANA_CHECKER_SEED" in os.environ:
        return [int(os.environ["NANOBANANA_CHECKER_SEED"])]
    first = int(os.environ.get("NANOBANANA_CHECKER_FIRST", "0"))
    count = int(os.environ.get("NANOBANANA_CHECKER_SCHEDULES", default))
    return list(range(first, first + count))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[RecordingEmulator, str]]:
    # Below HTTP too: stray bytes after bodies, connections closed after responses.
    emulator = RecordingEmulator(seed=7)
    wire = WireFaults(stray_bytes_rate=0.1, close_after_response_rate=0.1, seed=7)
    with serve(emulator, wire=wire) as server:
        yield emulator, server.base_url


@pytest.mark.parametrize("seed", seeds(60))
async def test_in_process(anyio_backend: str, tmp_path: pathlib.Path, seed: int) -> None:
    schedule = draw(seed)
    checker = Checker(
        schedule,
        RecordingEmulator(seed=seed),
        f"{KEY}-{seed}",
        tmp_path,
        "https://api.checker.test",
        in_process=True,
    )
    failures = await checker.check()
    assert failures == [], schedule.describe()


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(20))
async def test_over_loopback(
    anyio_backend: str,
    tmp_path: pathlib.Path,
    served: tuple[RecordingEmulator, str],
    seed: int,
) -> None:
    emulator, base_url = served
    schedule = draw(seed)
    checker = Checker(
        schedule, emulator, f"{KEY}-{anyio_backend}-{seed}", tmp_path, base_url, in_process=False
    )
    failures = await checker.check()
    assert failures == [], schedule.describe()
