"""Workers that stop: when their budget runs out, and when asked to (SIGTERM's
``BatchRun.stop``). Either way the worker ends, what it did not start stays pending, and each
job it touched is reported once.

A worker whose budget runs out ends, leaves the jobs it could not afford pending, and reports
each job it touched once.
The budget is the client's limits' (``LocalLimits`` or ``RedisLimits`` ``max_credits``, whose
admission raises ``BudgetExceededError`` before an attempt) or the worker's own
``max_credits``. Before, a worker on the client's limits skipped a job, released it to pending,
claimed it again at once and so on forever (thousands of results for five jobs). The
emulator's ledger is the judge of what was spent.
"""

from __future__ import annotations

import pathlib
from collections import Counter

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana, Job, LocalLimits, open_store
from nanobanana_async.batch.stores import SqlStore
from nanobanana_async.emulator import Emulator, Faults
from tests.support.batches import consuming, until
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

KEY = "sk-budget-0123456789"
BALANCE = 1_000
JOBS = 5
PRICE = 2  # gemini-2.5-flash-image


def _store(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


async def _work(client: AsyncNanoBanana, url: str, **options: object) -> list[str]:
    """The ids of the worker's results; stops reading (failing the test) well past one result
    a job, which the old worker reached at once."""
    ids: list[str] = []
    with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
        async with client.worker(url, concurrency=3, **options) as run:  # type: ignore[arg-type]
            async for result in run:
                assert result.id is not None
                ids.append(result.id)
                assert len(ids) <= 3 * JOBS, f"the worker goes round in circles: {Counter(ids)}"
            assert run.stats.stop_cause == "budget"
            assert run.stats.stopped_reason is not None
            assert "pending" in run.stats.stopped_reason
    return ids


async def _check(url: str, emulator: Emulator, ids: list[str], cap: int) -> None:
    store = _store(url)
    status = await store.status()
    done = status.counts.get("done", 0)
    # Each job the worker touched is reported once; the ones it could not afford stay pending.
    assert Counter(ids).most_common(1)[0][1] == 1
    assert done == cap // PRICE
    assert status.counts.get("pending", 0) == JOBS - done
    assert status.unfinished == JOBS - done  # nothing left claimed or sending
    # The ledger: exactly what the store says was spent, within the budget.
    spent = BALANCE - emulator.balance(KEY)
    assert spent == status.credits_spent == done * PRICE <= cap


@pytest.mark.parametrize("cap", [5, 0])
async def test_client_limits_budget_ends_the_worker(store_url: str, cap: int) -> None:
    emulator = Emulator(keys={KEY: BALANCE}, faults=Faults(latency=(0.0, 0.01)), seed=1)
    await _store(store_url).add(Job(f"a paper boat, take {i}", id=f"boat-{i}") for i in range(JOBS))
    limits = LocalLimits(max_credits=cap)
    async with AsyncNanoBanana(KEY, transport=emulator.transport(), limits=limits) as client:
        ids = await _work(client, store_url)
    await _check(store_url, emulator, ids, cap)


async def test_the_workers_own_budget_ends_it_the_same_way(store_url: str) -> None:
    emulator = Emulator(keys={KEY: BALANCE}, seed=2)
    jobs = [Job(f"a paper crane, take {i}", id=f"crane-{i}") for i in range(JOBS)]
    await _store(store_url).add(jobs)
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        ids = await _work(client, store_url, max_credits=5)
    await _check(store_url, emulator, ids, 5)


async def test_shared_redis_budget_ends_the_worker(
    tmp_path: pathlib.Path, redis_url: str, redis_server: RedisServer
) -> None:
    from nanobanana_async import RedisLimits

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    emulator = Emulator(keys={KEY: BALANCE}, seed=3)
    await _store(url).add(Job(f"a paper lantern, take {i}", id=f"lantern-{i}") for i in range(JOBS))
    limits = RedisLimits(redis_url, namespace=redis_server.namespace(), max_credits=5)
    await limits.create()  # a shared budget's ledger is made once, by an operator
    async with AsyncNanoBanana(KEY, transport=emulator.transport(), limits=limits) as client:
        ids = await _work(client, url)
    await _check(url, emulator, ids, 5)


# -- stopped workers ------------------------------------------------------------------------


async def test_a_stopped_worker_gives_back_what_it_did_not_start(store_url: str) -> None:
    emulator = Emulator(keys={KEY: BALANCE}, faults=Faults(latency=0.2), seed=5)
    store = open_store(store_url)
    assert isinstance(store, SqlStore)
    await store.add(Job(f"a worker's job {i}", id=f"w-{i}") for i in range(30))
    async with client(emulator) as api:
        run = api.worker(store, concurrency=4)
        async with consuming(run) as results:
            await until(lambda: len(results) >= 4 and emulator.stats.in_flight == 4)
            run.stop("SIGTERM: stopped taking jobs", grace=60)
    status = await store.status()
    done = status.counts.get("done", 0)
    assert done == emulator.stats.generations == len([r for r in results if r.ok])
    assert status.counts.get("pending", 0) == 30 - done  # claimed, not started: given back
    assert status.unfinished == 30 - done  # nothing left claimed or sending
    assert spent(emulator) == status.credits_spent == done * PRICE
    assert run.stats.stop_cause == "stopped"


async def test_a_following_worker_stops_while_it_polls(store_url: str) -> None:
    emulator = Emulator(keys={KEY: BALANCE})
    store = open_store(store_url)
    assert isinstance(store, SqlStore)
    await store.add([Job("the only job", id="only")])
    async with client(emulator) as api:
        run = api.worker(store, follow=True, poll_interval=3600)
        async with consuming(run) as results:
            await until(lambda: len(results) == 1)
            run.stop("test")  # no grace: the hour-long poll is cut short
    assert results[0].ok
    assert (await store.status()).counts == {"done": 1}


def client(emulator: Emulator) -> AsyncNanoBanana:
    return AsyncNanoBanana(KEY, transport=emulator.transport())


def spent(emulator: Emulator) -> int:
    return BALANCE - emulator.balance(KEY)
