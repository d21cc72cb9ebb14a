"""Workers on a real Postgres that restarts, crashes, stops answering, or sits behind pgbouncer.

The database is a cluster of this module's own (Debian's binaries, a free loopback port):
restarted with a fast shutdown (``pg_ctl restart -m fast``), down for 0.1 s, its postmaster
killed with SIGKILL, or frozen with SIGSTOP (a partition, as the client sees one: the socket
stays open and nothing answers). The emulator's ledger is the judge: every credit it took is
in the store (or in the spool until it is put back), no job is sent twice, every job is
reported once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

from nanobanana_async import (
    AsyncNanoBanana,
    BatchReport,
    Job,
    PostgresStore,
)
from nanobanana_async.batch.stores import SqlStore, open_store
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.pgbouncer import PgBouncer, pgbouncer_bin
from tests.support.postgres import PgCluster, started_cluster
from tests.support.store_faults import run_through
from tests.support.workers import cli_worker, reaped

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEY = "sk-postgres-faults"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster these tests may restart, kill and freeze (never the session's shared one)."""
    yield from started_cluster(crash_safe=True)


@pytest.fixture
def url(cluster: PgCluster) -> Iterator[str]:
    name = f"f_{uuid.uuid4().hex[:12]}"
    created = cluster.create_database(name)
    try:
        yield created
    finally:
        cluster.resume()  # a test that failed while the server was frozen
        cluster.drop_database(name)


def _store(url: str, **options: str) -> SqlStore:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    store = open_store(f"{url}?{query}" if query else url)
    assert isinstance(store, SqlStore)
    return store


def _jobs(count: int) -> list[Job]:
    return [Job(f"a quay in the rain, take {i}", id=f"job-{i:03d}") for i in range(count)]


async def _workers_through(
    store: SqlStore,
    emulator: Emulator,
    fault: Callable[[], Awaitable[object]],
    *,
    after: int,
    workers: int = 2,
) -> list[BatchReport]:
    """Run ``workers`` workers on ``store``; ``fault`` once ``after`` jobs were generated,
    while the workers have requests in flight."""
    reports: list[BatchReport] = []
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:

        async def work() -> None:
            reports.append(await client.run_worker(store, concurrency=8))

        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(work)
            with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
                while emulator.stats.generations < after:  # noqa: ASYNC110 - a counter
                    await anyio.sleep(0.01)
            await fault()
    return reports


async def _judge(store: SqlStore, emulator: Emulator, total: int) -> None:
    """Everything charged is stored, nothing was sent twice, nothing is left behind."""
    status = await store.status()
    assert status.counts == {"done": total}
    assert status.credits_spent == emulator.stats.credits_charged
    assert status.credits_may_have_been_spent == 0
    assert emulator.stats.generate_requests == total
    assert emulator.stats.duplicate_charges == 0
    assert status.spooled == 0


RESTARTS: dict[str, Callable[[PgCluster], Awaitable[None]]] = {
    "pg_ctl restart -m fast": lambda c: c.restart(mode="fast"),
    "down for 0.1 s": lambda c: c.restart(downtime=0.1),
    "restart -m immediate": lambda c: c.restart(mode="immediate"),
    "postmaster killed": lambda c: c.crash(),
}


@pytest.mark.parametrize("fault", RESTARTS)
async def test_workers_outlive_a_database_restart(cluster: PgCluster, url: str, fault: str) -> None:
    store = _store(url)
    total = 240
    await store.add(_jobs(total))
    emulator = Emulator(faults=Faults(latency=(0.01, 0.05)))
    reports = await _workers_through(
        store, emulator, lambda: RESTARTS[fault](cluster), after=total // 4
    )
    assert sum(r.succeeded for r in reports) == total
    assert sum(r.failed + r.skipped for r in reports) == 0
    await _judge(store, emulator, total)


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_workers_through_pgbouncer(cluster: PgCluster, url: str, mode: str) -> None:
    if pgbouncer_bin() is None:
        pytest.skip("pgbouncer not found (apt-get install pgbouncer)")
    # A small server pool shared by every client connection in transaction pooling, as in
    # production; session pooling needs a server connection per client connection.
    bouncer = PgBouncer.start(cluster, mode=mode, pool_size=3 if mode == "transaction" else 20)
    try:
        store = _store(bouncer.url(url.rsplit("/", 1)[1]))
        total = 300
        await store.add(_jobs(total))
        emulator = Emulator(faults=Faults(latency=(0.0, 0.01)))
        # A Postgres restart behind pgbouncer, too: its clients stay connected to it.
        reports = await _workers_through(
            store, emulator, lambda: cluster.restart(mode="fast"), after=total // 3
        )
        assert sum(r.succeeded for r in reports) == total
        async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
            batch = await client.run_batch(_jobs(total), journal=store, concurrency=16)
        assert batch.resumed == total  # batch mode through pgbouncer: every job found again
        await _judge(store, emulator, total)
    finally:
        bouncer.stop()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_prepared_statements_only_on_a_direct_connection(
    cluster: PgCluster, url: str, mode: str
) -> None:
    if pgbouncer_bin() is None:
        pytest.skip("pgbouncer not found (apt-get install pgbouncer)")
    direct = _connected(PostgresStore(url))
    bouncer = PgBouncer.start(cluster, mode=mode)
    try:
        pooled = _connected(PostgresStore(bouncer.url(url.rsplit("/", 1)[1])))
        # Prepared statements live in a server session: never through a pooler.
        assert (direct.prepare_threshold, pooled.prepare_threshold) == (5, None)
        pooled.close()
    finally:
        direct.close()
        bouncer.stop()


def _connected(store: PostgresStore) -> Any:
    conn = store._connect()
    store._setup(conn)
    return conn


async def test_a_worker_waits_out_a_frozen_database(cluster: PgCluster, url: str) -> None:
    # Statements hang on a frozen server: dropped after 1 s, retried on new connections
    # (each connect gives up after 2 s) until it answers again.
    store = _store(url, statement_timeout="1", connect_timeout="2", retry_window="60")
    total = 120
    await store.add(_jobs(total))
    emulator = Emulator(faults=Faults(latency=(0.01, 0.05)))

    async def freeze() -> None:
        cluster.pause()
        try:
            # Longer than a statement and a connection may take: both time out at least once.
            await anyio.sleep(4)
        finally:
            cluster.resume()

    reports = await _workers_through(store, emulator, freeze, after=total // 4, workers=1)
    assert reports[0].succeeded == total
    await _judge(store, emulator, total)


async def test_a_database_frozen_for_good_ends_the_run_with_one_error(
    cluster: PgCluster, url: str
) -> None:
    store = _store(url, statement_timeout="1", connect_timeout="2", retry_window="3")
    total = 120
    await store.add(_jobs(total))
    emulator = Emulator(faults=Faults(latency=(0.2, 0.3)))
    try:
        async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
            run = client.worker(store, concurrency=8)
            results, error = await run_through(run, emulator, cluster.pause, in_flight=8)
    finally:
        cluster.resume()
    assert error is not None
    assert "\n" not in str(error)
    assert "is unreachable" in str(error)
    assert str(store.spool.path) in str(error)
    charged = emulator.stats.credits_charged
    assert charged > 0
    assert sum(r.credits for r in results if r.ok) == charged  # every paid job reported
    # The results the database never took are in the spool, and go in when it is back.
    recovered = await store.recover()
    assert recovered.applied >= 1
    status = await store.status()
    assert status.credits_spent == charged
    assert status.counts["done"] == len([r for r in results if r.ok])


def test_a_cli_worker_whose_database_goes_away_says_so_in_one_line(
    cluster: PgCluster, url: str
) -> None:
    store = _store(url)
    total = 200
    anyio.run(store.add, _jobs(total))
    emulator = Emulator(keys={KEY: 1_000_000}, faults=Faults(latency=0.1))
    with serve(emulator) as server:
        proc = cli_worker(f"{url}?retry_window=2", server.base_url, KEY)
        with reaped([proc]):
            deadline = anyio.run(_wait_for, emulator, 40)
            assert deadline
            cluster.shutdown("fast")  # and it stays down
            _out, err = proc.communicate(timeout=120)
        charged = emulator.stats.credits_charged
    try:
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("nanobanana: error: job store ")
        assert "is unreachable" in last
        assert "nanobanana jobs recover" in last
    finally:
        cluster.launch()
        cluster.wait_ready()
    anyio.run(store.recover)
    status = anyio.run(store.status)
    assert status.credits_spent == charged
    assert status.spooled == 0


async def _wait_for(emulator: Emulator, generations: int) -> bool:
    with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
        while emulator.stats.generations < generations:  # noqa: ASYNC110 - a counter
            await anyio.sleep(0.01)
    return True
