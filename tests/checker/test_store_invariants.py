"""The money checker on job stores under faults (:mod:`tests.checker.stores`): batches and
workers (tasks of this process, and processes of their own) on SQLite, Postgres and Postgres
behind pgbouncer, and on a JSONL journal; the store failing under them (transient errors,
outages shorter and longer than its retry window, slow statements, lost answers, refusals,
Postgres restarted and killed, a full disk); stops, SIGTERM and SIGKILL; budgets,
``retry_ambiguous`` and the emulator's faults. On asyncio and Trio.

CI runs a few schedules of each; ``NANOBANANA_STORE_CHECKER_SCHEDULES=500`` runs more in-process
schedules and ``NANOBANANA_STORE_CHECKER_PROCESS_SCHEDULES=100`` more with processes (numbered
from ``NANOBANANA_CHECKER_FIRST``); ``NANOBANANA_CHECKER_SEED=N`` replays one.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from nanobanana_async.emulator import serve
from tests.checker.harness import RecordingEmulator
from tests.checker.store_schedule import StoreSchedule, draw
from tests.checker.stores import StoreChecker
from tests.support.pgbouncer import PgBouncer, pgbouncer_bin
from tests.support.postgres import PgCluster, started_cluster

pytestmark = pytest.mark.anyio

KEY = "sk-store-checker-0123456789abcdef"


def seeds(variable: str, default: int) -> list[int]:
    if "NANOBANANA_CHECKER_SEED" in os.environ:
        return [int(os.environ["NANOBANANA_CHECKER_SEED"])]
    first = int(os.environ.get("NANOBANANA_CHECKER_FIRST", "0"))
    count = int(os.environ.get(variable, default))
    return list(range(first, first + count))


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A Postgres of this module's own: schedules restart and kill it. Crash-safe
    (``synchronous_commit`` on), as production is: a commit acknowledged survives a kill."""
    yield from started_cluster(crash_safe=True)


@pytest.fixture(scope="module")
def bouncer(cluster: PgCluster) -> Iterator[PgBouncer]:
    """pgbouncer in transaction pooling in front of :func:`cluster`."""
    if pgbouncer_bin() is None:
        pytest.skip("pgbouncer not found (apt-get install pgbouncer)")
    started = PgBouncer.start(cluster, mode="transaction")
    try:
        yield started
    finally:
        started.stop()


MakeStore = Callable[[StoreSchedule], tuple[str, PgCluster | None]]


@pytest.fixture
def store_for(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[MakeStore]:
    """``make(schedule)``: the store URL for a schedule (a new database for Postgres), and the
    cluster its events restart."""
    made: list[tuple[PgCluster, str]] = []

    def make(schedule: StoreSchedule) -> tuple[str, PgCluster | None]:
        if schedule.backend == "sqlite":
            return f"sqlite:///{tmp_path / 'jobs.db'}", None
        if schedule.backend == "jsonl":
            return str(tmp_path / "journal.jsonl"), None
        cluster: PgCluster = request.getfixturevalue("cluster")
        name = f"c_{uuid.uuid4().hex[:12]}"
        url = cluster.create_database(name)
        made.append((cluster, name))
        if schedule.backend == "pgbouncer":
            bouncer: PgBouncer = request.getfixturevalue("bouncer")
            url = bouncer.url(name)
        return url, cluster

    yield make
    for cluster, name in made:
        cluster.drop_database(name)


@pytest.mark.parametrize("seed", seeds("NANOBANANA_STORE_CHECKER_SCHEDULES", 10))
async def test_store_schedules(
    anyio_backend: str, tmp_path: pathlib.Path, store_for: MakeStore, seed: int
) -> None:
    schedule = draw(seed)
    url, cluster = store_for(schedule)
    checker = StoreChecker(
        schedule,
        url,
        tmp_path,
        RecordingEmulator(seed=seed),
        f"{KEY}-{seed}",
        "https://api.checker.test",
        in_process=True,
        cluster=cluster,
    )
    failures = await checker.check()
    assert not failures, "\n".join([*failures, schedule.describe()])


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds("NANOBANANA_STORE_CHECKER_PROCESS_SCHEDULES", 2))
async def test_store_schedules_with_processes(
    anyio_backend: str, tmp_path: pathlib.Path, store_for: MakeStore, seed: int
) -> None:
    schedule = draw(seed, processes=True)
    url, cluster = store_for(schedule)
    emulator = RecordingEmulator(seed=seed)
    with serve(emulator) as server:
        checker = StoreChecker(
            schedule,
            url,
            tmp_path,
            emulator,
            f"{KEY}-{anyio_backend}-{seed}",
            server.base_url,
            in_process=False,
            cluster=cluster,
        )
        failures = await checker.check()
    assert not failures, "\n".join([*failures, schedule.describe()])
