"""Random schedules for the money checker: faults, budgets, options and interruptions.

A schedule is drawn from one seed, so a failing seed replays exactly (``NANOBANANA_CHECKER_SEED``
runs one). Each schedule is a few runs of the same jobs against one emulator key: the first
runs may be interrupted (``break``, a cancelled scope, ``aclose`` from another task), later
ones resume from the journal, and the last one runs to the end.
"""

from __future__ import annotations

import random
from typing import Literal

import attrs

from nanobanana_async import DEFAULT_PRICING, Job
from nanobanana_async.emulator import Faults

__all__ = ["Interruption", "Run", "Schedule", "draw"]

Interruption = Literal["none", "break", "break_named", "cancel", "aclose"]
Store = Literal["jsonl", "sqlite"]

MODELS = ("gemini-2.5-flash-image", "gemini-2.5-flash-image-hd", "gemini-3-pro-image-preview")


@attrs.frozen
class Run:
    """One pass over the schedule's jobs."""

    concurrency: int
    max_credits: int | None
    client_max_credits: int | None  # the client's own limits (LocalLimits), around the batch
    max_per_second: float | None
    ordered: bool
    max_retries: int
    retry_ambiguous: bool
    interruption: Interruption
    after_results: int  # the interruption comes after this many results


@attrs.frozen
class Schedule:
    seed: int
    jobs: tuple[Job, ...]
    faults: Faults
    journal: bool
    store: Store  # the journal: a JSONL file or a SQLite job store
    downloads: bool
    runs: tuple[Run, ...]

    @property
    def cost(self) -> int:
        return sum(DEFAULT_PRICING.credits(job) for job in self.jobs)

    def describe(self) -> str:
        return (
            f"seed={self.seed} jobs={len(self.jobs)} journal={self.journal} store={self.store} "
            f"downloads={self.downloads} faults={self.faults} runs={list(self.runs)}"
        )


def _faults(rng: random.Random) -> Faults:
    """A mix of the emulator's faults: outcomes that replace an answer (their shares add up
    to at most 1) and modifiers of whatever answer is sent."""
    outcomes = {
        "server_error_rate": rng.choice((0.0, 0.1, 0.3, 0.5)),
        "rate_limit_rate": rng.choice((0.0, 0.0, 0.05)),
        "drop_rate": rng.choice((0.0, 0.0, 0.05, 0.15)),
        "truncated_success_rate": rng.choice((0.0, 0.0, 0.1)),
        "cut_success_rate": rng.choice((0.0, 0.0, 0.1)),
        "success_as_5xx_rate": rng.choice((0.0, 0.0, 0.1, 0.3)),
    }
    total = sum(outcomes.values())
    if total > 1:
        outcomes = {name: rate / total for name, rate in outcomes.items()}
    modifiers = {
        name: rng.choice((0.0, 0.0, 0.1, 0.3))
        for name in ("gzip_rate", "odd_unicode_rate", "bad_url_rate", "charge_on_hangup_rate")
    }
    partial = rng.choice((0.0, 0.0, 0.2))
    return Faults(
        **outcomes,
        **modifiers,
        partial_rate=partial,
        extra_rate=rng.choice((0.0, 0.0, 0.2)) * (1 - partial),
        retry_after=0.01,
        drop_after_charge_share=rng.random(),
        latency=rng.choice((0.0, (0.0, 0.01), (0.0, 0.03))),
    )


def _run(rng: random.Random, jobs: int, cost: int, *, last: bool) -> Run:
    interruption: Interruption = (
        "none" if last else rng.choice(("none", "break", "break_named", "cancel", "aclose"))
    )
    budget = rng.choice((None, None, rng.randint(0, cost), rng.randint(cost // 2, cost + 10)))
    return Run(
        concurrency=rng.choice((1, 2, 4, 8, 16)),
        max_credits=budget,
        client_max_credits=rng.choice((None, None, None, rng.randint(0, cost))),
        max_per_second=rng.choice((None, None, None, 200.0)),
        ordered=rng.random() < 0.3,
        max_retries=rng.randint(0, 3),
        retry_ambiguous=rng.random() < 0.3,
        interruption=interruption,
        after_results=rng.randint(0, jobs),
    )


def draw(seed: int) -> Schedule:
    """The schedule for ``seed``."""
    rng = random.Random(seed)
    count = rng.randint(1, 24)
    jobs = tuple(
        Job(
            f"checker {seed} job {i}",
            model=rng.choice(MODELS),
            num=rng.choice((1, 1, 1, 2, 3)),
        )
        for i in range(count)
    )
    cost = sum(DEFAULT_PRICING.credits(job) for job in jobs)
    journal = rng.random() < 0.7
    runs = rng.randint(1, 3) if journal else 1
    return Schedule(
        seed=seed,
        jobs=jobs,
        faults=_faults(rng),
        journal=journal,
        store=rng.choice(("jsonl", "sqlite")),
        downloads=journal and rng.random() < 0.4,
        runs=tuple(_run(rng, count, cost, last=i == runs - 1) for i in range(runs)),
    )
