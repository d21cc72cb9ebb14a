"""Random schedules for the store checker (:mod:`tests.checker.stores`): workers and batches
on one job store, the store failing under them, stops and kills.

A schedule is drawn from one seed (``draw``), so a failing one replays exactly. It names a
store (SQLite, Postgres, Postgres behind pgbouncer, or a JSONL journal), the jobs (added to the
store with ``store.add`` when workers take part), the emulator's faults, the store's faults
(random transient errors and slow statements; outages shorter and longer than its
``retry_window``; answers lost after a statement ran; one statement refused; Postgres
restarted or killed), and one to three rounds. In a round, actors run at once on the store:
batches (``client.batch(jobs, journal=store)``), workers in this process (``client.worker``)
and in processes of their own (``run_worker`` under ``stop_on_signals``, or ``nanobanana
worker``), each with its own budgets and retries and perhaps a stop: ``BatchRun.stop(grace=)``,
a ``GracefulStop`` asked once or twice, a cancelled scope, ``break``, SIGTERM or SIGKILL. Stops
and store events come after a number of requests reached the server (not after a time), so a
schedule means the same on a slow machine.
"""

from __future__ import annotations

import random
from typing import Literal

import attrs

from nanobanana_async import DEFAULT_PRICING, Job
from nanobanana_async.emulator import Faults

__all__ = ["Actor", "Backend", "Event", "Round", "StoreSchedule", "draw", "final_actor"]

Backend = Literal["sqlite", "postgres", "pgbouncer", "jsonl"]
Kind = Literal["batch", "task", "process", "cli"]
StopKind = Literal[
    "none", "stop", "graceful", "graceful_twice", "cancel", "break", "sigterm", "sigkill"
]
EventKind = Literal["outage", "restart", "crash", "lost", "transient", "refuse", "disk_full"]

MODELS = ("gemini-2.5-flash-image", "gemini-2.5-flash-image-hd", "gemini-3-pro-image-preview")
# Statements a store fault may hit (a substring of each, on SQLite and Postgres alike).
STATEMENTS = (
    "SET state = 'sending'",
    "SET state = 'done'",
    "SET state = 'claimed'",
    "SET state = 'ambiguous'",
    "SET state = 'pending'",
    "SET state = ",
    "INSERT INTO",
    "SET lease_until",
    "state = CASE",
    "SET files",
)


@attrs.frozen
class Actor:
    """One run on the store: a batch, or a worker in this process or in another."""

    kind: Kind
    backend: str  # a process's event loop ("asyncio" or "trio"); tasks run on the test's
    concurrency: int
    max_credits: int | None  # the run's own budget
    client_max_credits: int | None  # the client's limits (LocalLimits)
    max_retries: int
    retry_ambiguous: bool
    follow: bool  # a worker that keeps polling (only with a stop that ends it)
    poll: float
    stop: StopKind
    after: int  # the stop comes after this many of its requests (break: results)
    grace: float
    jobs: tuple[int, ...]  # a batch's jobs (indices into the schedule's), in its order
    downloads: bool
    store_faults: bool  # its connections get the schedule's random store faults


@attrs.frozen
class Event:
    """Something the store goes through, once the round's requests reach ``after``."""

    kind: EventKind
    after: int
    duration: float  # an outage, or the downtime of a restart
    statement: str  # which statements a lost answer, transient error or refusal hits
    count: int
    mode: str = "fast"  # a restart's shutdown mode (pg_ctl -m)


@attrs.frozen
class Round:
    actors: tuple[Actor, ...]
    events: tuple[Event, ...]


@attrs.frozen
class StoreSchedule:
    seed: int
    backend: Backend
    jobs: tuple[Job, ...]
    added: bool  # the jobs were added to the store (pending) before the first round
    faults: Faults
    error_rate: float  # random transient store errors, per statement
    slow_rate: float  # random slow statements
    slow: float
    retry_window: float
    lease: float
    rounds: tuple[Round, ...]

    @property
    def cost(self) -> int:
        return sum(DEFAULT_PRICING.credits(job) for job in self.jobs)

    @property
    def processes(self) -> bool:
        return any(a.kind in ("process", "cli") for r in self.rounds for a in r.actors)

    def describe(self) -> str:
        return (
            f"seed={self.seed} backend={self.backend} jobs={len(self.jobs)} added={self.added} "
            f"faults={self.faults} store_faults=(error_rate={self.error_rate}, "
            f"slow_rate={self.slow_rate}, slow={self.slow}) retry_window={self.retry_window} "
            f"lease={self.lease} rounds={list(self.rounds)}"
        )


def _faults(rng: random.Random) -> Faults:
    drop = rng.choice((0.0, 0.05, 0.15))
    outcomes = {
        "server_error_rate": rng.choice((0.0, 0.1, 0.3)),
        "rate_limit_rate": rng.choice((0.0, 0.0, 0.05)),
        "drop_rate": drop,
        "truncated_success_rate": rng.choice((0.0, 0.0, 0.05)),
        "cut_success_rate": rng.choice((0.0, 0.0, 0.05)),
        "success_as_5xx_rate": rng.choice((0.0, 0.0, 0.1)),
    }
    partial = rng.choice((0.0, 0.0, 0.0, 0.2))
    return Faults(
        **outcomes,
        retry_after=0.01,
        drop_after_charge_share=rng.random(),
        charge_on_hangup_rate=rng.choice((0.0, 0.5, 1.0)),
        partial_rate=partial,
        extra_rate=rng.choice((0.0, 0.0, 0.0, 0.2)) * (1 - partial),
        # Requests take a while: stops, kills and store faults meet some of them in flight.
        latency=rng.choice(((0.0, 0.02), (0.01, 0.08), (0.05, 0.2))),
    )


def _stop(rng: random.Random, kind: Kind) -> StopKind:
    if kind == "batch":
        choices: tuple[StopKind, ...] = ("stop", "graceful", "graceful_twice", "cancel", "break")
    elif kind == "task":
        choices = ("stop", "graceful", "graceful_twice", "cancel", "break")
    else:
        choices = ("sigterm", "sigterm", "sigkill")
    return "none" if rng.random() < 0.4 else rng.choice(choices)


def _actor(rng: random.Random, kind: Kind, jobs: int, cost: int) -> Actor:
    stop = _stop(rng, kind)
    budget = rng.choice((None, None, None, rng.randint(0, cost), rng.randint(cost // 2, cost)))
    order = list(range(jobs))
    if kind == "batch" and rng.random() < 0.3:  # a part of the jobs, in another order
        order = rng.sample(order, rng.randint(1, jobs))
    follow = kind in ("task", "process") and stop not in ("none", "break", "sigkill")
    return Actor(
        kind=kind,
        backend=rng.choice(("asyncio", "trio")) if kind == "process" else "asyncio",
        concurrency=rng.choice((1, 2, 4, 8)),
        max_credits=budget,
        client_max_credits=(
            None if kind == "cli" else rng.choice((None, None, None, rng.randint(0, cost)))
        ),
        max_retries=rng.randint(0, 3),
        retry_ambiguous=rng.random() < 0.3 and kind != "cli",
        follow=follow and rng.random() < 0.5,
        poll=rng.choice((0.05, 0.3, 2.0)),
        stop=stop,
        after=rng.randint(0, max(1, jobs)),
        grace=rng.choice((0.0, 0.05, 0.5, 5.0)),
        jobs=tuple(order),
        downloads=rng.random() < 0.25,
        store_faults=rng.random() < 0.8,
    )


def _events(rng: random.Random, backend: Backend, jobs: int, window: float) -> tuple[Event, ...]:
    events = []
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        after = rng.randint(0, max(1, jobs))
        if backend == "jsonl":
            events.append(Event("disk_full", after, 0.0, "", rng.randint(0, 3)))
            continue
        kinds: list[EventKind] = ["outage", "outage", "lost", "lost", "transient", "refuse"]
        if backend != "sqlite":
            kinds += ["restart", "restart", "crash"]
        kind = rng.choice(kinds)
        # Outages and restarts shorter than the retry window (a pause) and longer (the run
        # stops and spools what is in flight).
        duration = rng.choice((0.1 * window, 0.5 * window, 1.5 * window))
        if kind in ("restart", "crash"):
            duration = rng.choice((0.0, 0.2, duration))
        statement, count = rng.choice(STATEMENTS), rng.choice((1, 1, 2, 5))
        mode = rng.choice(("fast", "immediate"))
        events.append(Event(kind, after, duration, statement, count, mode))
    return tuple(events)


def draw(seed: int, *, processes: bool = False) -> StoreSchedule:
    """The schedule for ``seed`` (``processes``: workers in processes of their own take part)."""
    rng = random.Random(seed)
    backends: tuple[Backend, ...] = (
        ("sqlite", "postgres", "pgbouncer")
        if processes
        else ("sqlite", "sqlite", "sqlite", "postgres", "postgres", "pgbouncer", "jsonl")
    )
    backend = rng.choice(backends)
    count = rng.randint(1, 16)
    ids = rng.random() < 0.5
    jobs = tuple(
        Job(
            f"store checker {seed} job {i}",
            model=rng.choice(MODELS),
            num=rng.choice((1, 1, 1, 2, 3)),
            id=f"s{seed}-{i}" if ids else None,
        )
        for i in range(count)
    )
    cost = sum(DEFAULT_PRICING.credits(job) for job in jobs)
    # Behind pgbouncer a restarted Postgres is logged into again after server_login_retry
    # (3 s in the fixture): a shorter window ends the runs that meet a restart, a longer one
    # waits it out.
    window = rng.choice((0.3, 1.0)) if backend != "pgbouncer" else rng.choice((1.0, 4.0))
    kinds: tuple[Kind, ...]
    if backend == "jsonl":
        kinds = ("batch",)  # a JSONL journal holds no pending jobs, and one run at a time
    elif processes:
        kinds = ("process", "process", "cli", "task", "batch")
    else:
        kinds = ("task", "task", "batch")
    rounds = []
    for _ in range(rng.randint(1, 3)):
        size = 1 if backend == "jsonl" else rng.randint(1, 3)
        actors = [_actor(rng, rng.choice(kinds), count, cost) for _ in range(size)]
        if processes and not any(a.kind in ("process", "cli") for a in actors):
            actors[0] = _actor(rng, "process", count, cost)
        rounds.append(Round(tuple(actors), _events(rng, backend, count, window)))
    store_faulty = rng.random() < 0.7
    return StoreSchedule(
        seed=seed,
        backend=backend,
        jobs=jobs,
        added=backend != "jsonl"
        and (any(a.kind != "batch" for r in rounds for a in r.actors) or rng.random() < 0.3),
        faults=_faults(rng),
        error_rate=rng.choice((0.0, 0.02, 0.1)) if store_faulty else 0.0,
        slow_rate=rng.choice((0.0, 0.05, 0.2)) if store_faulty else 0.0,
        slow=rng.choice((0.02, 0.1, 0.3)),
        retry_window=window,
        lease=rng.choice((1.5, 5.0, 60.0)),
        rounds=tuple(rounds),
    )


def final_actor(schedule: StoreSchedule) -> Actor:
    """The run that ends every schedule, on a healthy store: a worker when the jobs were added,
    else a batch of every job (the emulator still fails as before)."""
    return Actor(
        kind="task" if schedule.added else "batch",
        backend="asyncio",
        concurrency=4,
        max_credits=None,
        client_max_credits=None,
        max_retries=2,
        retry_ambiguous=False,
        follow=False,
        poll=0.05,
        stop="none",
        after=0,
        grace=0.0,
        jobs=tuple(range(len(schedule.jobs))),
        downloads=False,
        store_faults=False,
    )
