"""RedisLimits behind a client, on asyncio and Trio: shared budget and cool-down, batches,
the connection's lifetime (with and without ``async with``), and Redis refusing or hanging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import anyio
import pytest

from nanobanana_async import (
    BudgetExceededError,
    LimitsUnavailableError,
    RateLimitError,
    RedisLimits,
)
from nanobanana_async.emulator import Emulator, Faults
from tests.support.redis_server import RedisServer

from .helpers import client, ledger

pytestmark = pytest.mark.anyio


async def test_two_clients_share_one_budget(redis_server: RedisServer, redis_url: str) -> None:
    ns = redis_server.namespace()
    emulator = Emulator()
    await ledger(redis_url, ns, 11)
    first = client(emulator, RedisLimits(redis_url, namespace=ns, max_credits=11))
    second = client(emulator, RedisLimits(redis_url, namespace=ns, max_credits=11))
    async with first, second:
        reports = []
        async with anyio.create_task_group() as tg:

            async def run(nb: object, tag: str) -> None:
                reports.append(await nb.run_batch([f"{tag} {i}" for i in range(6)]))  # type: ignore[attr-defined]

            tg.start_soon(run, first, "a")
            tg.start_soon(run, second, "b")
        status = await first.limits.status()  # type: ignore[attr-defined]
    assert sum(r.succeeded for r in reports) == 5  # 2 credits each, 11 shared
    assert emulator.stats.credits_charged == 10 == status.spent
    assert status.reserved == 0
    skipped = [r for report in reports for r in report.results if r.status == "skipped"]
    assert len(skipped) == 7
    assert all("shared max_credits" in (r.reason or "") for r in skipped)


async def test_a_batch_budget_applies_inside_the_shared_one(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    emulator = Emulator()
    async with client(emulator, await ledger(redis_url, ns, 100)) as nb:
        report = await nb.run_batch([f"p{i}" for i in range(6)], max_credits=6)
        assert (report.succeeded, report.skipped) == (3, 3)
        status = await nb.limits.status()  # type: ignore[attr-defined]
    assert (status.spent, status.left) == (6, 94)


async def test_a_429_pauses_every_client_on_the_namespace(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    limited = Emulator(faults=Faults(rate_limit_rate=1.0, retry_after=30))
    healthy = Emulator()
    first = client(limited, RedisLimits(redis_url, namespace=ns), max_retries=0)
    second = client(healthy, RedisLimits(redis_url, namespace=ns))
    async with first, second:
        with pytest.raises(RateLimitError):
            await first.generate("told to wait")
        with anyio.move_on_after(0.5) as scope:
            await second.generate("must wait too")
        assert scope.cancelled_caught
        assert (await second.limits.status()).cooldown > 25  # type: ignore[attr-defined]
    assert healthy.stats.generate_requests == 0


async def test_budget_exceeded_on_a_single_generate(
    redis_server: RedisServer, redis_url: str
) -> None:
    emulator = Emulator()
    limits = await ledger(redis_url, redis_server.namespace(), 3)
    async with client(emulator, limits) as nb:
        await nb.generate("fits")
        with pytest.raises(BudgetExceededError, match="nothing was sent"):
            await nb.generate("does not")
    assert emulator.stats.generate_requests == 1


async def test_a_client_never_entered_connects_for_each_call(
    redis_server: RedisServer, redis_url: str
) -> None:
    emulator = Emulator()
    limits = await ledger(redis_url, redis_server.namespace(), 10)
    nb = client(emulator, limits)
    await nb.generate("lazy")
    await nb.run_batch(["lazy batch"])
    assert (await limits.status()).spent == 4
    await nb.aclose()
    # Usable again, and opened, by another client.
    async with client(emulator, limits) as again:
        await again.generate("reopened")
    assert (await limits.status()).spent == 6
    await limits.aclose()


def test_a_client_never_closed_leaves_nothing_behind(redis_url: str) -> None:
    # Limits never opened hold nothing between calls: no task, no connection, no warning at
    # the end of the event loop, on either loop. In a child process so that the end of its
    # event loop is the real one.
    script = textwrap.dedent(
        f"""
        import anyio, sys
        from nanobanana_async import AsyncNanoBanana, RedisLimits
        from nanobanana_async.emulator import Emulator

        async def main():
            limits = RedisLimits({redis_url!r}, namespace="never-closed", max_credits=100)
            await limits.create(replace=True)
            nb = AsyncNanoBanana(
                "nb-key-0123456789", base_url="http://127.0.0.1:9",
                transport=Emulator().transport(), limits=limits,
            )
            await nb.generate("left open")
            print("generated")

        anyio.run(main, backend=sys.argv[1])
        """
    )
    for backend in ("asyncio", "trio"):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", script, backend],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "generated"
        assert done.stderr == ""


async def test_redis_down_fails_closed_then_recovers(
    redis_factory: Callable[..., RedisServer],
) -> None:
    emulator = Emulator()
    server = redis_factory(password="s3cret-pw")
    limits = RedisLimits(server.url, namespace="down")
    await anyio.to_thread.run_sync(server.stop)
    # Opening checks Redis: down, the client's async with fails at once, in one line.
    with pytest.raises(LimitsUnavailableError) as caught:
        async with client(emulator, limits):
            pass
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "nothing was sent" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(limits)
    assert caught.value.url is not None
    assert "s3cret" not in caught.value.url
    await anyio.to_thread.run_sync(server.start)
    async with client(emulator, limits) as nb:
        await nb.generate("Redis is up")
        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(LimitsUnavailableError, match="nothing was sent"):
            await nb.generate("not while Redis is down")
        assert emulator.stats.generate_requests == 1
        await anyio.to_thread.run_sync(server.start)
        # The same client: it connects again once Redis is back.
        with anyio.fail_after(10):
            while True:
                try:
                    await nb.generate("Redis is back")
                    break
                except LimitsUnavailableError:
                    await anyio.sleep(0.1)
    assert emulator.stats.generations == 2


async def test_redis_hanging_fails_closed(redis_server: RedisServer, redis_url: str) -> None:
    emulator = Emulator()
    limits = RedisLimits(redis_url, namespace=redis_server.namespace(), timeout=0.3)
    async with client(emulator, limits) as nb:
        await nb.generate("before")
        redis_server.hang()
        try:
            with pytest.raises(LimitsUnavailableError, match="no answer within the timeout"):
                await nb.generate("while Redis hangs")
        finally:
            redis_server.resume()
    assert emulator.stats.generate_requests == 1


async def test_a_break_leaves_no_reservation_behind(
    redis_server: RedisServer, redis_url: str
) -> None:
    emulator = Emulator(faults=Faults(latency=0.2))
    limits = await ledger(redis_url, redis_server.namespace(), 1000)
    async with client(emulator, limits) as nb:
        async with nb.batch([f"p{i}" for i in range(40)], concurrency=8) as run:
            async for _ in run:
                break
        status = await limits.status()
    # Attempts cut short keep their reservation as may-have-been-spent; none stays reserved.
    assert status.reserved == 0
    assert status.spent + status.uncertain <= 1000
    assert status.spent == emulator.stats.credits_charged or status.uncertain > 0
