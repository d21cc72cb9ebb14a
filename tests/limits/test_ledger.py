"""A shared budget that survives Redis: a ledger has an identity and is made only by an
operator, a Redis that can lose it is refused for a budget, and a lost or evicted ledger is
never taken for a new one. The bill (what the emulator charged) is the judge."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import anyio
import pytest

from nanobanana_async import LimitsUnavailableError, RedisLimits
from nanobanana_async.emulator import Emulator
from tests.support.redis_server import RedisServer

from .helpers import client, ledger

pytestmark = pytest.mark.anyio

EVICTING = ["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"]


def prompts(tag: str, n: int) -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


async def test_a_ledger_lost_in_a_restart_is_never_made_again(
    redis_factory: Callable[..., RedisServer],
) -> None:
    # Redis without persistence, accepted by the operator (allow_volatile): processes A and
    # B spend 40 of 80, Redis restarts and forgets everything. A and B refuse to go on, and
    # so does C, started afterwards: nothing makes a ledger but an operator.
    server = redis_factory(appendonly=False)
    url = f"{server.url}?namespace=acct&max_credits=80&allow_volatile=1"
    await RedisLimits.from_url(url).create()
    emulator = Emulator()
    a = client(emulator, RedisLimits.from_url(url))
    b = client(emulator, RedisLimits.from_url(url))
    async with a, b:
        assert (await a.run_batch(prompts("a", 10))).succeeded == 10
        assert (await b.run_batch(prompts("b", 10))).succeeded == 10
        await anyio.to_thread.run_sync(server.stop)
        await anyio.to_thread.run_sync(server.start)
        for nb in (a, b):
            with pytest.raises(LimitsUnavailableError, match="is gone or was replaced"):
                await nb.run_batch(prompts("after", 10))
            with pytest.raises(LimitsUnavailableError, match="is gone or was replaced"):
                await nb.generate("one more")
    c = client(emulator, RedisLimits.from_url(url))
    with pytest.raises(LimitsUnavailableError, match="no credit ledger"):
        await c.run_batch(prompts("c", 40))
    with pytest.raises(LimitsUnavailableError, match="no credit ledger"):
        async with c:
            pass
    assert emulator.stats.credits_charged == 40


async def test_a_ledger_kept_by_the_append_only_file_goes_on_after_a_restart(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    emulator = Emulator()
    async with client(emulator, await ledger(redis_url, ns, 30)) as nb:
        assert (await nb.run_batch(prompts("before", 5))).succeeded == 5
        await anyio.to_thread.run_sync(redis_server.stop)
        await anyio.to_thread.run_sync(redis_server.start)
        report = await nb.run_batch(prompts("after", 15))
    assert (report.succeeded, report.skipped) == (10, 5)
    assert emulator.stats.credits_charged == 30


async def test_a_budget_is_refused_on_a_redis_that_can_evict_it(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(options=EVICTING)
    limits = RedisLimits(server.url, namespace="acct", max_credits=100)
    with pytest.raises(LimitsUnavailableError) as caught:
        await limits.create()
    message = str(caught.value)
    assert "maxmemory-policy is allkeys-lru" in message
    assert "noeviction" in message
    assert "allow_volatile" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(LimitsUnavailableError, match="allkeys-lru"):
        async with limits:
            pass
    # Rates and cool-downs lose nothing that matters there: no refusal without a budget.
    async with RedisLimits(server.url, namespace="acct", max_per_second=100) as rate:
        await rate.acquire(0)


async def test_a_budget_is_refused_on_a_redis_without_persistence(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(appendonly=False)
    limits = RedisLimits(server.url, namespace="acct", max_credits=100)
    with pytest.raises(LimitsUnavailableError, match=r"appendonly is off.*appendonly yes"):
        await limits.create()
    # Volatile-* policies evict only keys with a time to live: the ledger's have none.
    volatile = redis_factory(options=["--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru"])
    await RedisLimits(volatile.url, namespace="acct", max_credits=100).create()


def fill(server: RedisServer, megabytes: int) -> None:
    """Write ``megabytes`` of other keys, as a busy cache does."""
    value = "x" * 1000
    commands = "".join(f"SET junk:{i} {value}\r\n" for i in range(megabytes * 1000))
    subprocess.run(
        ["redis-cli", "-p", str(server.port), "--pipe"],
        input=commands,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


async def test_an_evicted_ledger_is_refused_never_taken_for_a_new_one(
    redis_factory: Callable[..., RedisServer],
) -> None:
    # Accepted by the operator (allow_volatile), the cache evicts the ledger once its
    # processes stop: a new process refuses instead of spending the budget again.
    server = redis_factory(appendonly=False, options=EVICTING)
    url = f"{server.url}?namespace=acct&max_credits=100&allow_volatile=1"
    await RedisLimits.from_url(url).create()
    emulator = Emulator()
    async with client(emulator, RedisLimits.from_url(url)) as nb:
        assert (await nb.run_batch(prompts("a", 20))).succeeded == 20
    with anyio.fail_after(60):
        while server.cli("EXISTS", "nanobanana:{acct}:state").strip() != "0":
            await anyio.to_thread.run_sync(fill, server, 4)
    later = client(emulator, RedisLimits.from_url(url))
    with pytest.raises(LimitsUnavailableError, match="no credit ledger"):
        await later.run_batch(prompts("b", 50))
    assert emulator.stats.credits_charged == 40


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        (["--rename-command", "CONFIG", ""], True),
        (["--appendonly", "no", "--rename-command", "CONFIG", ""], False),
        (["--rename-command", "CONFIG", "", "--rename-command", "INFO", ""], False),
    ],
    ids=["info-persistent", "info-volatile", "no-config-no-info"],
)
async def test_a_redis_without_config_is_read_through_info_or_refused(
    redis_factory: Callable[..., RedisServer], options: list[str], accepted: bool
) -> None:
    # Managed Redis often forbids CONFIG: INFO says the same; where neither answers the
    # ledger cannot be vouched for, and allow_volatile is the operator's word for it.
    server = redis_factory(options=options)
    limits = RedisLimits(server.url, namespace="managed", max_credits=10)
    if accepted:
        await limits.create()
    else:
        with pytest.raises(LimitsUnavailableError, match="a credit budget is refused"):
            await limits.create()
        await RedisLimits(
            server.url, namespace="managed", max_credits=10, allow_volatile=True
        ).create()
    async with RedisLimits(
        server.url, namespace="managed", max_credits=10, allow_volatile=not accepted
    ) as used:
        await used.settle(await used.acquire(4), spent=4)
        assert (await used.status()).left == 6


async def test_another_cap_than_the_ledgers_is_refused(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    await ledger(redis_url, ns, 100)
    with pytest.raises(
        LimitsUnavailableError, match=r"ledger has max_credits=100.*given max_credits=200"
    ):
        async with RedisLimits(redis_url, namespace=ns, max_credits=200):
            pass


async def test_a_replaced_ledger_is_refused_by_the_processes_that_used_the_old_one(
    redis_server: RedisServer, redis_url: str
) -> None:
    ns = redis_server.namespace()
    await ledger(redis_url, ns, 10)
    async with RedisLimits(redis_url, namespace=ns, max_credits=10) as running:
        await running.settle(await running.acquire(2), spent=2)
        await RedisLimits(redis_url, namespace=ns, max_credits=10).create(replace=True)
        with pytest.raises(LimitsUnavailableError, match="is gone or was replaced"):
            await running.acquire(2)
    async with RedisLimits(redis_url, namespace=ns, max_credits=10) as fresh:
        await fresh.acquire(2)


async def test_a_ledger_restored_from_an_older_copy_is_refused_by_a_process_that_saw_more(
    redis_server: RedisServer, redis_url: str
) -> None:
    # An RDB snapshot brought back: the same ledger, fewer reservations than this process saw.
    ns = redis_server.namespace()
    await ledger(redis_url, ns, 100)
    async with RedisLimits(redis_url, namespace=ns) as limits:
        for _ in range(3):
            await limits.settle(await limits.acquire(2), spent=2)
        await anyio.to_thread.run_sync(
            redis_server.cli, "HSET", f"nanobanana:{{{ns}}}:state", "seq", "1", "spent", "2"
        )
        with pytest.raises(LimitsUnavailableError, match="went back in time"):
            await limits.acquire(2)
