"""Driving a batch from a test: read it in a task while the test waits for a state to act on
(stop it, cancel it), and wait for counters to come true."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio

from nanobanana_async import JobResult
from nanobanana_async.batch import BatchRun

__all__ = ["consuming", "until"]


async def until(condition: Callable[[], object]) -> None:
    """Wait for ``condition()`` to come true (polls counters; fails after 30 s of nothing)."""
    with anyio.fail_after(30):  # a guard against a hang, not a timing assertion
        while not condition():  # noqa: ASYNC110 - polls counters
            await anyio.sleep(0.005)


@contextlib.asynccontextmanager
async def consuming(run: BatchRun) -> AsyncIterator[list[JobResult]]:
    """Read ``run`` in a task for the block; the list fills with its results as they come.
    Leaving the block waits for the batch to end (stop it, or cancel the scope around)."""
    results: list[JobResult] = []

    async def consume() -> None:
        async with run:
            async for result in run:
                results.append(result)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        yield results
