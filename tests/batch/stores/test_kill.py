"""Workers killed with SIGKILL mid-run over one Postgres store: nothing is paid twice.

Three worker processes (the CLI on asyncio, and ``run_worker`` on Trio and on asyncio) share
600 jobs against the emulator on a loopback socket, which takes its time (latency) and
charges even when the client has hung up: a killed worker's requests are paid for. Two
workers are killed with ``kill -9`` mid-run and two fresh ones started. At the end every
job is in exactly one final state; no Idempotency-Key was charged twice; the jobs the kills
left ``ambiguous`` were not sent again; and the ledger holds exactly the credits the store
reports as spent plus those of the ambiguous jobs whose request had reached the server.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import pytest

from nanobanana_async import Job, open_store
from nanobanana_async.batch.stores import FINAL_STATES, SqlStore
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.workers import cli_worker, reaped, script_worker

pytestmark = pytest.mark.slow

KEY = "sk-kill-test-0123456789"
BALANCE = 1_000_000
JOBS = 600
CONCURRENCY = 8


async def _wait_for_done(store: SqlStore, count: int) -> None:
    with anyio.fail_after(120):  # a guard against a hang, not a timing assertion
        while (await store.status()).counts.get("done", 0) < count:  # noqa: ASYNC110 - polls
            await anyio.sleep(0.05)


def test_kill_two_workers_mid_run(pg_url: str) -> None:
    store = open_store(pg_url)
    assert isinstance(store, SqlStore)
    jobs = [Job(f"a lighthouse in a storm, take {i}", id=f"job-{i:03d}") for i in range(JOBS)]
    assert anyio.run(store.add, jobs) == JOBS
    # A killed worker's requests are paid for: the server charges clients that hung up.
    faults = Faults(latency=0.25, charge_on_hangup_rate=1.0)
    emulator = Emulator(keys={KEY: BALANCE}, faults=faults, seed=3)
    with serve(emulator) as server:
        base = server.base_url
        first = [
            cli_worker(pg_url, base, KEY, "-c", str(CONCURRENCY)),
            script_worker(pg_url, base, KEY, "trio", CONCURRENCY),
            script_worker(pg_url, base, KEY, "asyncio", CONCURRENCY),
        ]
        procs = list(first)
        with reaped(procs):
            anyio.run(_wait_for_done, store, JOBS // 4)
            for victim in first[1:]:  # one Trio and one asyncio worker, with jobs in flight
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(timeout=30)
                assert victim.returncode == -signal.SIGKILL
            killed_at = anyio.run(store.status)
            procs += [
                script_worker(pg_url, base, KEY, "trio", CONCURRENCY),
                cli_worker(pg_url, base, KEY, "-c", str(CONCURRENCY)),
            ]
            for proc in [first[0], *procs[3:]]:
                _out, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err[-2000:]
        status = anyio.run(store.status)
        rows = anyio.run(_rows, store)
        charged = dict(emulator.stats.charged_idempotency_keys)
        balance = emulator.balance(KEY)

    # Every job in exactly one final state.
    assert len(rows) == JOBS
    assert {r["id"] for r in rows} == {j.id for j in jobs}
    assert all(r["state"] in FINAL_STATES for r in rows), status.counts
    assert status.unfinished == 0
    # No job was charged twice: not even the ambiguous ones, which were never sent again.
    assert [key for key, times in charged.items() if times > 1] == []
    ambiguous = [r for r in rows if r["state"] == "ambiguous"]
    done = [r for r in rows if r["state"] == "done"]
    assert 1 <= len(ambiguous) <= 2 * CONCURRENCY  # the kills hit jobs that were sending
    assert len(done) + len(ambiguous) == JOBS
    assert all(charged.get(r["idempotency_key"]) == 1 for r in done)
    paid_ambiguous = [r for r in ambiguous if r["idempotency_key"] in charged]
    # The ledger: what the store says was spent, plus the ambiguous jobs the server charged.
    ledger = BALANCE - balance
    assert ledger == status.credits_spent + sum(2 * r["num"] for r in paid_ambiguous)
    assert (
        status.credits_spent
        <= ledger
        <= (status.credits_spent + status.credits_may_have_been_spent)
    )
    print(
        f"\nkill test: {JOBS} jobs, 2 of 3 workers killed at {killed_at.counts.get('done', 0)} "
        f"done, 2 started; final {dict(status.counts)}; ambiguous {len(ambiguous)} "
        f"({len(paid_ambiguous)} charged by the server); charged twice 0; ledger {ledger} = "
        f"store {status.credits_spent} + ambiguous charged "
        f"{ledger - status.credits_spent} (may have been spent: "
        f"{status.credits_may_have_been_spent})"
    )


async def _rows(store: SqlStore) -> list[dict[str, Any]]:
    return [row async for row in store.rows()]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_worker_killed_between_retries_of_lost_answers_leaves_them_counted(
    store_url: str, backend: str
) -> None:
    # Every answer is lost after the charge; the worker retries them (retry_ambiguous) and is
    # killed while it does. Whatever the server charged, the store counts.
    store = open_store(store_url)
    assert isinstance(store, SqlStore)
    anyio.run(store.add, [Job("a lighthouse in a storm", id="storm", num=2)])
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0, latency=0.2)
    emulator = Emulator(keys={KEY: BALANCE}, faults=faults, seed=3)
    with serve(emulator) as server:
        proc = script_worker(store_url, server.base_url, KEY, backend, 1, "20")
        with reaped([proc]):
            anyio.run(_wait_for_charges, emulator, 3)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        charged = BALANCE - emulator.balance(KEY)

    async def after_the_kill() -> Any:
        session = await store.connect(worker=True)  # its reaper finds the dead worker's row
        await session.close()
        return await store.status()

    status = anyio.run(after_the_kill)
    assert charged >= 3 * 4
    assert status.counts == {"ambiguous": 1}
    assert status.credits_may_have_been_spent >= charged


async def _wait_for_charges(emulator: Emulator, count: int) -> None:
    with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
        while emulator.stats.charges < count:  # noqa: ASYNC110 - a counter
            await anyio.sleep(0.01)
