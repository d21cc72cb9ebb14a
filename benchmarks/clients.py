"""The clients measured side by side: the SDK, hand-written httpx and hand-written aiohttp.

The hand-written ones come in two forms: *plain*, as an asyncio user writes them
(``asyncio.Semaphore`` and an ``asyncio.TaskGroup``: the baselines of the headline ratios), and
*anyio* (``anyio.Semaphore`` and an anyio task group), which runs unchanged under Trio and
costs a good part of its speed on asyncio.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator

import anyio
import attrs
import httpx

from nanobanana_async import AsyncNanoBanana, Job

GENERATE_PATH = "/v1/images/generate"
MODEL = "gemini-2.5-flash-image"


@attrs.frozen
class Outcome:
    """One measured run: how many requests, how many succeeded, wall and CPU seconds."""

    requests: int
    ok: int
    wall: float
    cpu: float


def body(i: int) -> dict[str, object]:
    return {"prompt": f"benchmark prompt {i}", "num": 1, "model": MODEL, "image_size": "1:1"}


def jobs(n: int) -> Iterator[Job]:
    """A lazy input: jobs are built as the batch pulls them."""
    for i in range(n):
        yield Job(f"benchmark prompt {i}", MODEL, "1:1", 1)


async def _timed(run: Callable[[], Awaitable[int]], n: int) -> Outcome:
    cpu, wall = time.process_time(), time.perf_counter()
    ok = await run()
    return Outcome(n, ok, time.perf_counter() - wall, time.process_time() - cpu)


async def sdk(
    base_url: str, key: str, n: int, concurrency: int, transport: httpx.AsyncBaseTransport | None
) -> Outcome:
    """``AsyncNanoBanana.run_batch`` with its default transport (or ``transport``)."""
    async with AsyncNanoBanana(key, base_url=base_url, transport=transport, max_retries=0) as nb:

        async def run() -> int:
            report = await nb.run_batch(jobs(n), concurrency=concurrency)
            return report.succeeded

        return await _timed(run, n)


async def _semaphore_loop(n: int, concurrency: int, post: Callable[[int], Awaitable[bool]]) -> int:
    ok = 0
    limiter = anyio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal ok
        try:
            if await post(i):
                ok += 1
        except Exception:  # counted as not ok, like a failed job in the SDK's report
            pass
        finally:
            limiter.release()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            await limiter.acquire()
            tg.start_soon(one, i)
    return ok


async def _asyncio_loop(n: int, concurrency: int, post: Callable[[int], Awaitable[bool]]) -> int:
    """``_semaphore_loop`` with asyncio's own primitives: what an asyncio user writes."""
    ok = 0
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal ok
        try:
            if await post(i):
                ok += 1
        except Exception:  # counted as not ok, like a failed job in the SDK's report
            pass
        finally:
            semaphore.release()

    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            await semaphore.acquire()
            tg.create_task(one(i))
    return ok


Loop = Callable[[int, int, Callable[[int], Awaitable[bool]]], Awaitable[int]]
LOOPS: dict[str, Loop] = {"plain": _asyncio_loop, "anyio": _semaphore_loop}


async def raw_httpx(
    base_url: str,
    key: str,
    n: int,
    concurrency: int,
    transport: httpx.AsyncBaseTransport | None,
    loop: str = "anyio",
) -> Outcome:
    """What a user would write: one ``httpx.AsyncClient`` with limits sized to the semaphore
    (``loop``: ``"plain"`` asyncio primitives, or ``"anyio"``)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    url = base_url.rstrip("/") + GENERATE_PATH
    async with httpx.AsyncClient(
        limits=limits, transport=transport, timeout=httpx.Timeout(180, pool=None)
    ) as client:

        async def post(i: int) -> bool:
            response = await client.post(url, json=body(i), headers=headers)
            return response.status_code == 200 and response.json()["code"] == 0

        return await _timed(lambda: LOOPS[loop](n, concurrency, post), n)


async def raw_aiohttp(
    base_url: str, key: str, n: int, concurrency: int, loop: str = "plain"
) -> Outcome:
    """aiohttp: one session, a connector sized to the semaphore (asyncio only; ``loop``:
    ``"plain"`` asyncio primitives, or ``"anyio"``)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    url = base_url.rstrip("/") + GENERATE_PATH
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=180)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(i: int) -> bool:
            async with session.post(url, json=body(i), headers=headers) as response:
                data = json.loads(await response.read())
                return response.status == 200 and data["code"] == 0

        return await _timed(lambda: LOOPS[loop](n, concurrency, post), n)
