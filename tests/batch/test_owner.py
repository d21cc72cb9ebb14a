"""Who owns a batch's work: the run's own ``async with``, else its client's; never nobody.

Every test runs on asyncio and Trio, against the emulator in process.
"""

from __future__ import annotations

import anyio
import pytest

from nanobanana_async import AsyncNanoBanana, NanoBananaError
from nanobanana_async.emulator import Emulator, Faults
from tests.support.clients import emulated

pytestmark = pytest.mark.anyio

KEY = "nb-owner-0123456789abcdefXYZ"


async def test_an_error_in_the_client_s_block_comes_out_as_itself_and_stops_the_batch() -> None:
    # The client's task group is left without the block's exception: no exception group
    # around the caller's own error, and the batch running in the group is stopped.
    emulator = Emulator(faults=Faults(latency=0.05))

    async def fail_inside() -> None:
        async with emulated(emulator, KEY) as client:
            async for _ in client.batch([f"p {i}" for i in range(50)], concurrency=4):
                raise LookupError("the caller's own")

    with pytest.raises(LookupError, match="the caller's own"):
        await fail_inside()
    assert emulator.stats.in_flight == 0
    assert emulator.stats.generate_requests <= 4


async def test_a_plain_loop_in_another_task_runs_in_the_client_s_group() -> None:
    # A request handler's task is not the one that opened the client (a FastAPI lifespan):
    # its loop still runs in the client's group, and its cancellation stops the batch.
    emulator = Emulator(faults=Faults(latency=0.01))
    seen: list[int] = []
    async with emulated(emulator, KEY) as client:

        async def handler() -> None:
            async for result in client.batch([f"p {i}" for i in range(12)], concurrency=3):
                seen.append(result.index)

        async with anyio.create_task_group() as tg:
            tg.start_soon(handler)
        assert sorted(seen) == list(range(12))

        slow = Emulator(faults=Faults(latency=30.0))
        async with emulated(slow, KEY) as other:

            async def hung_up() -> None:
                async for _ in other.batch([f"q {i}" for i in range(12)], concurrency=3):
                    pass

            with anyio.move_on_after(0.3):
                await hung_up()
            with anyio.fail_after(1):
                while slow.stats.in_flight:  # noqa: ASYNC110
                    await anyio.sleep(0.01)


async def test_a_run_s_own_block_owns_it_on_a_client_never_opened() -> None:
    emulator = Emulator()
    client = emulated(emulator, KEY)
    got: list[int] = []
    run = client.batch([f"p {i}" for i in range(6)], concurrency=2)

    async def consume() -> None:  # the run may be read from another task
        async for result in run:
            got.append(result.index)

    async with run, anyio.create_task_group() as tg:
        tg.start_soon(consume)
    await client.aclose()
    assert sorted(got) == list(range(6))
    assert run.stats.succeeded == 6


async def test_a_closed_client_starts_no_batch() -> None:
    emulator = Emulator()
    async with emulated(emulator, KEY) as client:
        await client.aclose()
        with pytest.raises(NanoBananaError, match="closed"):
            async for _ in client.batch(["never sent"]):
                pass
    assert emulator.stats.generate_requests == 0


async def test_a_copy_s_plain_loop_needs_an_owner_too() -> None:
    client = AsyncNanoBanana(KEY, transport=Emulator().transport())
    with pytest.raises(NanoBananaError, match="no owner"):
        async for _ in client.with_options(max_retries=0).batch(["never sent"]):
            pass
    await client.aclose()
