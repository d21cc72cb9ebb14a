"""The money checker across processes (:mod:`tests.checker.shared`): real asyncio and Trio
processes sharing one budget through Redis, Redis restarted under them with and without an
append-only file, processes killed, the emulator's bill checked against the budget.

CI runs a few schedules; ``NANOBANANA_SHARED_CHECKER_SCHEDULES=200`` runs more (numbered
from ``NANOBANANA_CHECKER_FIRST``), ``NANOBANANA_CHECKER_SEED=N`` replays one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.checker.shared import check, draw
from tests.support.redis_server import RedisServer, redis_factory

__all__ = ["redis_factory"]

pytestmark = pytest.mark.slow


def seeds(default: int) -> list[int]:
    if "NANOBANANA_CHECKER_SEED" in os.environ:
        return [int(os.environ["NANOBANANA_CHECKER_SEED"])]
    first = int(os.environ.get("NANOBANANA_CHECKER_FIRST", "0"))
    count = int(os.environ.get("NANOBANANA_SHARED_CHECKER_SCHEDULES", default))
    return list(range(first, first + count))


@pytest.mark.parametrize("seed", seeds(4))
def test_shared_budget_across_processes(
    redis_factory: Callable[..., RedisServer], seed: int
) -> None:
    schedule = draw(seed)
    server = redis_factory(appendonly=schedule.appendonly)
    failures = check(schedule, server)
    assert failures == [], schedule.describe()
