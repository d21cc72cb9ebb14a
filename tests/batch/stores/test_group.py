"""Group commit (``stores/group.py``): how writes of many jobs share transactions.

The ``apply`` here stands in for a store's transaction and records each batch it is given,
so the tests read which writes went together and how often a waiting caller was woken.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked

from nanobanana_async.batch.stores.group import GroupCommit, Op

pytestmark = pytest.mark.anyio


class Recorder:
    """An ``apply`` that decides each op (its result: its position in the batch) and keeps
    the batches it saw; ``fail`` makes the next batch fail as a whole."""

    def __init__(self, *, pause: float = 0.0) -> None:
        self.batches: list[list[Op]] = []
        self.pause = pause
        self.fail: BaseException | None = None

    async def __call__(self, ops: list[Op]) -> None:
        self.batches.append(list(ops))
        if self.pause:
            await anyio.sleep(self.pause)
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        for number, op in enumerate(ops):
            op.result, op.done = number, True


async def test_writes_ready_together_share_one_transaction() -> None:
    # Before, the first caller committed alone at once and everybody else went into the
    # next transaction: two commits where one would do.
    apply = Recorder()
    group = GroupCommit(apply, writers=1)
    results: list[int] = []

    async def write() -> None:
        results.append(await group.submit(Op((), "rowcount")))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(write)
    assert [len(batch) for batch in apply.batches] == [50]
    assert sorted(results) == list(range(50))


async def test_writes_made_during_a_commit_go_into_the_next_one() -> None:
    apply = Recorder(pause=0.05)
    group = GroupCommit(apply, writers=1)
    first = anyio.Event()

    async def write(i: int) -> None:
        await group.submit(Op(((str(i), {}),), "rowcount"))
        if i == 0:
            first.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, 0)
        await anyio.sleep(0.01)  # the first commit is under way
        for i in range(1, 20):
            tg.start_soon(write, i)
        await first.wait()
    # (Trio starts tasks in an order of its own: the batches are compared as sets.)
    assert [{op.statements[0][0] for op in batch} for batch in apply.batches] == [
        {"0"},
        {str(i) for i in range(1, 20)},
    ]


@pytest.mark.parametrize("writers", [1, 3])
async def test_each_write_is_applied_exactly_once(writers: int) -> None:
    apply = Recorder(pause=0.001)
    group = GroupCommit(apply, writers=writers)
    ops = [Op(((str(i), {}),), "rowcount") for i in range(300)]

    async def write(op: Op) -> None:
        for _ in range(3):  # each caller writes again once its write is decided
            await anyio.lowlevel.checkpoint()
        await group.submit(op)

    async with anyio.create_task_group() as tg:
        for op in ops:
            tg.start_soon(write, op)
    applied = [op for batch in apply.batches for op in batch]
    assert len(applied) == len(ops)
    assert {id(op) for op in applied} == {id(op) for op in ops}
    assert all(op.done and op.error is None for op in ops)


async def test_a_failed_transaction_fails_its_own_writes_only() -> None:
    apply = Recorder(pause=0.02)
    group = GroupCommit(apply, writers=1)
    outcomes: dict[int, str] = {}

    async def write(i: int) -> None:
        try:
            await group.submit(Op(((str(i), {}),), "rowcount"))
            outcomes[i] = "ok"
        except RuntimeError as exc:
            outcomes[i] = str(exc)

    apply.fail = RuntimeError("refused")
    async with anyio.create_task_group() as tg:
        tg.start_soon(write, 0)  # the first transaction: refused
        await anyio.sleep(0.005)
        for i in range(1, 5):  # queued meanwhile: the next transaction
            tg.start_soon(write, i)
    assert outcomes == {0: "refused", 1: "ok", 2: "ok", 3: "ok", 4: "ok"}


async def test_a_waiting_write_is_decided_even_when_its_caller_is_cancelled() -> None:
    apply = Recorder(pause=0.05)
    group = GroupCommit(apply, writers=1)
    op = Op((("late", {}),), "rowcount")

    async def write(target: Op) -> None:
        await group.submit(target)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, Op((("first", {}),), "rowcount"))
        await anyio.sleep(0.01)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await write(op)  # shielded: it waits for its commit all the same
    assert op.done
    assert op.result == 0
    assert [len(batch) for batch in apply.batches] == [1, 1]


async def test_flush_waits_for_every_write_in_flight() -> None:
    apply = Recorder(pause=0.02)
    group = GroupCommit(apply, writers=2)
    ops = [Op(((str(i), {}),), "rowcount") for i in range(10)]

    async with anyio.create_task_group() as tg:
        for op in ops:
            tg.start_soon(group.submit, op)
        await wait_all_tasks_blocked()  # every write is queued or being committed
        await group.flush()
        assert all(op.done for op in ops)


async def test_a_commit_wakes_the_writes_it_decided_and_no_other() -> None:
    # Before, every caller waited on one event that each commit set: with hundreds of jobs
    # in flight, each commit woke all of them to find most writes still undecided.
    apply = Recorder(pause=0.005)
    group = GroupCommit(apply, writers=1)
    wakeups = 0
    original = anyio.Event.wait

    async def counting_wait(self: anyio.Event) -> None:
        nonlocal wakeups
        await original(self)
        wakeups += 1

    async def job(i: int) -> None:
        for step in range(5):  # a job writes again once its write is decided
            await group.submit(Op(((f"{i}.{step}", {}),), "rowcount"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(anyio.Event, "wait", counting_wait)
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(job, i)
    writes, commits = 150, len(apply.batches)
    assert sum(len(batch) for batch in apply.batches) == writes
    assert commits >= 5
    # Each caller that waited is woken once for its result; a caller that waits to lead
    # the next batch is woken once more. Nobody is woken in vain.
    assert wakeups <= writes + commits
