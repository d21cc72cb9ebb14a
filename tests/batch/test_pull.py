"""The runner's workers pull their own jobs, and run_batch collects in the calling task.

A transport in the same process may answer without ever yielding to the event loop: a batch
on one must still be cancellable, let other tasks run, and leave no task behind; every job
must come back exactly once whichever way it is consumed (run_batch, iteration, ordered).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import httpx
import pytest

from nanobanana_async import AsyncNanoBanana, NanoBananaError
from nanobanana_async.batch import BatchRun

pytestmark = pytest.mark.anyio

KEY = "nb-pull-0123456789abcdef"
OK = b'{"code":0,"message":"ok","data":{"url":"https://img.test/1.png"}}'


def canned() -> httpx.MockTransport:
    """Answers at once, never awaiting anything: the job never yields."""
    return httpx.MockTransport(lambda request: httpx.Response(200, content=OK))


def client() -> AsyncNanoBanana:
    return AsyncNanoBanana(KEY, base_url="http://127.0.0.1:1", transport=canned())


def endless() -> Iterator[str]:
    for i in itertools.count():
        yield f"prompt {i}"


async def test_run_batch_on_an_in_process_transport_can_be_cancelled(anyio_backend: str) -> None:
    async with client() as nb:
        with anyio.move_on_after(0.3) as scope:
            await nb.run_batch(endless(), concurrency=4)
        assert scope.cancelled_caught


async def test_other_tasks_run_while_such_a_batch_runs(anyio_backend: str) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with client() as nb, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        report = await nb.run_batch([f"p{i}" for i in range(2000)], concurrency=8)
        tg.cancel_scope.cancel()
    assert report.succeeded == 2000
    assert ticks > 100  # at least one tick per few jobs, not one at the end


@pytest.mark.parametrize("concurrency", [1, 3, 64])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("source", ["list", "async"])
async def test_every_job_comes_back_once_however_consumed(
    anyio_backend: str, concurrency: int, ordered: bool, source: str
) -> None:
    n = 250
    prompts = [f"p{i}" for i in range(n)]

    async def aprompts() -> AsyncIterator[str]:
        for p in prompts:
            if len(p) % 2:
                await anyio.lowlevel.checkpoint()
            yield p

    async with client() as nb:
        jobs = prompts if source == "list" else aprompts()
        report = await nb.run_batch(jobs, concurrency=concurrency, ordered=ordered)
        assert sorted(r.index for r in report.results) == list(range(n))
        if ordered:
            assert [r.index for r in report.results] == list(range(n))
        seen = []
        async with nb.batch(
            prompts if source == "list" else aprompts(), concurrency=concurrency, ordered=ordered
        ) as run:
            async for result in run:
                seen.append(result.index)
        assert sorted(seen) == list(range(n))
        if ordered:
            assert seen == list(range(n))


async def iterate(run: BatchRun, into: list[int]) -> None:
    async with run:
        async for result in run:
            into.append(result.index)


async def test_an_input_failing_midway_finishes_what_started_then_raises(
    anyio_backend: str,
) -> None:
    def failing() -> Iterator[str]:
        yield from (f"p{i}" for i in range(10))
        raise ValueError("the input broke")

    async with client() as nb:
        with pytest.raises(ValueError, match="the input broke"):
            await nb.run_batch(failing(), concurrency=4)
        got: list[int] = []
        with pytest.raises(ValueError, match="the input broke"):
            await iterate(nb.batch(failing(), concurrency=4), got)
        assert sorted(got) == list(range(10))


async def test_a_run_collects_once(anyio_backend: str) -> None:
    async with client() as nb:
        run = nb.batch(["a"])
        assert len(await run.collect()) == 1
        with pytest.raises(NanoBananaError, match="already started"):
            await run.collect()


@pytest.mark.parametrize("concurrently", [False, True], ids=["after", "during"])
async def test_a_collected_run_cannot_be_iterated_into_a_second_run(
    anyio_backend: str, concurrently: bool
) -> None:
    # Iterating would have started the batch again over the same input: every job sent twice.
    requests: list[httpx.Request] = []
    started, release = anyio.Event(), anyio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        started.set()
        await release.wait()
        return httpx.Response(200, content=OK)

    transport = httpx.MockTransport(answer)
    collected: list[int] = []
    async with AsyncNanoBanana(KEY, base_url="http://127.0.0.1:1", transport=transport) as nb:
        run = nb.batch(["a", "b", "c"], concurrency=2)

        async def collect() -> None:
            collected.extend(result.index for result in await run.collect())

        if concurrently:
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                await started.wait()  # collect() has sent its first request
                try:
                    # Bounded: a second run would wait for its own first result, forever.
                    with pytest.raises(NanoBananaError, match="collect"), anyio.fail_after(10):
                        await run.__anext__()
                finally:
                    release.set()
        else:
            release.set()
            await collect()
            with pytest.raises(NanoBananaError, match="collect"):
                await run.__anext__()
    assert sorted(collected) == [0, 1, 2]
    assert len(requests) == 3


async def test_closing_the_client_stops_a_collecting_batch(anyio_backend: str) -> None:
    async with client() as nb, anyio.create_task_group() as tg:
        failures: list[BaseException] = []

        async def run() -> None:
            try:
                await nb.run_batch(endless(), concurrency=4)
            except NanoBananaError as exc:
                failures.append(exc)

        tg.start_soon(run)
        await anyio.sleep(0.1)
        await nb.aclose()
    assert len(failures) == 1
    assert "closed" in str(failures[0])
