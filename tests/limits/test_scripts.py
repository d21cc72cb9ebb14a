"""The Lua scripts' semantics on a real Redis: rate slots, the budget with leases (renewed
while their holder lives), the cool-down, a lost ledger, reset, and one hash tag for every
key."""

from __future__ import annotations

import itertools
import math

import anyio
import pytest

from nanobanana_async import BudgetExceededError, LimitsUnavailableError, RateLimitError
from nanobanana_async.limits import Permit, RedisLimits
from nanobanana_async.limits.spacing import start_interval
from tests.support.redis_server import RedisServer

from .helpers import ledger, redis_state

pytestmark = pytest.mark.anyio


async def test_start_slots_are_spaced_by_the_interval(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    async with RedisLimits(redis_url, namespace=ns, max_per_second=1000) as limits:
        slots = []
        for _ in range(10):
            await limits.acquire(0)
            slots.append(int((await redis_state(redis_server, ns))["state"]["next_us"]))
    interval = math.ceil(start_interval(1000) * 1_000_000)
    # Each admission takes the next slot: the next free one moves by exactly the interval
    # (or further, when the slot was already in the past).
    assert all(b - a >= interval for a, b in itertools.pairwise(slots))


async def test_concurrent_admissions_never_share_a_slot(
    redis_server: RedisServer, redis_url: str
) -> None:
    # 100 at once under 200/s: the last one is admitted about half a second after the first.
    ns = redis_server.namespace()
    starts: list[float] = []
    async with RedisLimits(redis_url, namespace=ns, max_per_second=200) as limits:

        async def one() -> None:
            await limits.acquire(0)
            starts.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
    starts.sort()
    span = starts[-1] - starts[0]
    assert span >= 99 * start_interval(200) * 0.9


async def test_budget_reserve_spend_release_keep(redis_server: RedisServer, redis_url: str) -> None:
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 20) as limits:
        spent = await limits.acquire(8)
        released = await limits.acquire(4)
        kept = await limits.acquire(4)
        status = await limits.status()
        assert (status.reserved, status.left, status.in_flight) == (16, 4, 3)
        await limits.settle(spent, spent=6)  # a partial answer: 2 of the 8 go back
        await limits.settle(released, outcome=RateLimitError("429", status_code=429))
        await limits.settle(kept, outcome=ConnectionResetError())  # may have been charged
        status = await limits.status()
        assert (status.spent, status.uncertain, status.reserved, status.left) == (6, 4, 0, 10)
        await limits.settle(spent, spent=6)  # settling twice changes nothing
        assert (await limits.status()).spent == 6


async def test_budget_never_fits_and_waits_for_reservations_in_flight(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 10) as limits:
        first = await limits.acquire(6)
        with pytest.raises(BudgetExceededError, match="no room for 11 credits"):
            await limits.acquire(11)
        got: list[int] = []

        async def second() -> None:
            permit = await limits.acquire(6)  # fits only once the first is released
            got.append(permit.cost)

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.sleep(0.2)
            assert got == []
            await limits.settle(first)  # never sent: released
        assert got == [6]


async def test_expired_lease_is_kept_as_may_have_been_spent(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    limits = await ledger(redis_url, ns, 10, lease=0.2)
    async with limits:
        orphan = await limits.acquire(6)  # its holder "dies": never settled, never renewed
    await anyio.sleep(0.4)
    status = await limits.status()
    assert (status.uncertain, status.reserved, status.left) == (6, 0, 4)
    async with limits:
        # Settling it late changes nothing: it never goes back to what is left.
        await limits.settle(orphan)
        assert (await limits.status()).left == 4
        with pytest.raises(BudgetExceededError):
            await limits.acquire(5)


async def test_a_live_holder_renews_its_leases(redis_server: RedisServer, redis_url: str) -> None:
    # An attempt that outlives the lease (a slow generation) keeps its reservation while its
    # process lives: settled, it counts as spent, not as may have been spent.
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 10, lease=0.3) as limits:
        permit = await limits.acquire(6)
        await anyio.sleep(1.2)  # four leases
        status = await limits.status()
        assert (status.reserved, status.uncertain) == (6, 0)
        await limits.settle(permit, spent=6)
        status = await limits.status()
    assert (status.spent, status.uncertain, status.reserved, status.left) == (6, 0, 0, 4)


async def test_limits_not_open_take_the_long_lease(
    redis_server: RedisServer, redis_url: str
) -> None:
    # Nothing renews the reservations of limits that are not open: they hold 600 s at least.
    ns = redis_server.namespace()
    limits = await ledger(redis_url, ns, 10, lease=0.2)
    permit = await limits.acquire(6)
    await anyio.sleep(0.5)
    assert (await limits.status()).reserved == 6
    await limits.settle(permit, spent=6)
    assert (await limits.status()).spent == 6


async def test_cool_down_keeps_the_latest_deadline(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    async with (
        RedisLimits(redis_url, namespace=ns) as first,
        RedisLimits(redis_url, namespace=ns) as second,
    ):
        # Two 429s seen by two processes (no reservation: settled with an empty permit).
        await first.settle(Permit(), pause=30)
        await second.settle(Permit(), pause=0.1)  # shorter: ignored
        status = await second.status()
        assert 25 < status.cooldown <= 30
        # Another process (no local copy of the pause) is told to wait by Redis.
        async with RedisLimits(redis_url, namespace=ns) as third:
            with anyio.move_on_after(0.3) as scope:
                await third.acquire(0)
            assert scope.cancelled_caught


async def test_caps_given_once_apply_to_every_process(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 5, max_per_second=50) as setter:
        await setter.settle(await setter.acquire(2), spent=2)
    async with RedisLimits(redis_url, namespace=ns) as plain:
        status = await plain.status()
        assert (status.max_credits, status.max_per_second, status.left) == (5, 50.0, 3)
        with pytest.raises(BudgetExceededError):
            await plain.acquire(4)


async def test_a_lost_ledger_fails_closed_until_an_operator_resets_it(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 10) as limits:
        await limits.settle(await limits.acquire(2), spent=2)
        await anyio.to_thread.run_sync(redis_server.wipe)
        await anyio.to_thread.run_sync(redis_server.start)
        with pytest.raises(LimitsUnavailableError, match="ledger this process uses is gone"):
            await limits.acquire(2)
        assert await limits.reset() == 0  # the operator's act: this process takes it
        await limits.settle(await limits.acquire(2), spent=2)
        assert (await limits.status()).spent == 2


async def test_reset_keeps_the_caps_and_zeroes_the_ledger(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 10, max_per_second=5) as limits:
        await limits.settle(await limits.acquire(4), spent=4)
        await limits.acquire(2)  # outstanding
        await limits.settle(Permit(), pause=60)
        before = (await limits.status()).ledger
        assert await limits.reset() == 1
        status = await limits.status()
        assert (status.spent, status.reserved, status.cooldown, status.left) == (0, 0, 0, 10)
        assert status.max_per_second == 5
        assert status.ledger not in (None, before)


async def test_every_key_shares_one_hash_tag(redis_server: RedisServer, redis_url: str) -> None:
    ns = redis_server.namespace()
    async with await ledger(redis_url, ns, 10, max_per_second=100) as limits:
        await limits.acquire(2)
        await limits.settle(await limits.acquire(2), outcome=RateLimitError("x", status_code=429))
    state = await redis_state(redis_server, ns)
    assert sorted(state["keys"]) == [f"nanobanana:{{{ns}}}:{name}" for name in ("leases", "state")]


async def test_concurrent_calls_of_one_process_share_round_trips(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def evalsha_calls() -> int:
        stats = await anyio.to_thread.run_sync(redis_server.cli, "INFO", "commandstats")
        line = next((x for x in stats.splitlines() if x.startswith("cmdstat_evalsha:")), "")
        return int(line.split("calls=")[1].split(",")[0]) if line else 0

    async with await ledger(redis_url, redis_server.namespace(), 10**6) as limits:
        await limits.settle(await limits.acquire(1), spent=1)  # scripts loaded, pool open
        before = await evalsha_calls()

        async def one() -> None:
            await limits.settle(await limits.acquire(1), spent=1)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
        sent = await evalsha_calls() - before
        assert (await limits.status()).spent == 201
    # 400 operations (200 admissions, 200 settlements) in far fewer script calls.
    assert 0 < sent < 100
