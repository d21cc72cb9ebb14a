"""The store checker: runs a schedule of :mod:`tests.checker.store_schedule` and checks the money
invariants (:mod:`tests.checker.store_checks`) after every round and at the end.

Each actor (a batch, a worker task, a worker process, ``nanobanana worker``) has an API key of
its own, so the emulator's ledger says what each one was charged, job by job (a job's prompt
names it). The store's faults are injected into the in-process actors' own connections
(``tests/support/store_faults.py``: one set of faults for the schedule, so an outage meets
all of them), into a worker process's connections by the process itself (random ones), and
into Postgres itself (restarts, kills) for everybody. A JSONL journal's disk fills up.

After the rounds, the spool is put back (``jobs recover``), leases still held by runs that
ended are let run out (set in the past: the time an operator waits), and a last run on a
healthy store finishes what is left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import attrs
import httpx

from nanobanana_async import (
    AsyncNanoBanana,
    JobResult,
    LocalLimits,
    NanoBananaError,
    RetryPolicy,
    open_store,
)
from nanobanana_async.batch import BatchRun, GracefulStop
from nanobanana_async.batch.journal import Journal
from nanobanana_async.batch.stores import JobStore, JsonlStore, SqlStore
from tests.support.postgres import PgCluster
from tests.support.store_faults import StoreFaults

from .harness import RecordingEmulator
from .store_checks import Outcome, Snapshot, check_final, check_round, snapshot
from .store_schedule import Actor, Event, Round, StoreSchedule, final_actor
from .worker import result_entry

__all__ = ["StoreChecker"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A stop waits for some of its actor's requests; one that never come (the jobs went to other
# actors, or the budget ran out) stops it after this long (a follow worker must end).
FALLBACK = 3.0
GUARD = 180.0  # a process still running after this long has hung


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class DiskFull:
    """A JSONL journal's disk, filled on demand: the writes after :meth:`fill` get ``room``
    bytes more, then fail with ENOSPC (the line being written torn) until :meth:`free`."""

    def __init__(self) -> None:
        self.room: int | None = None

    def fill(self, room: int) -> None:
        self.room = room

    def free(self) -> None:
        self.room = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        append = Journal._append
        disk = self

        def limited(journal: Journal, data: bytes) -> None:
            if disk.room is None:
                append(journal, data)
                return
            fits = data[: disk.room]
            disk.room -= len(fits)
            if fits:
                append(journal, fits)
            if len(fits) < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        Journal._append = limited  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            Journal._append = append  # type: ignore[method-assign]


@attrs.define
class StoreChecker:
    """Drives one schedule; :meth:`check` returns every broken invariant (empty: all kept)."""

    schedule: StoreSchedule
    url: str  # the store (a sqlite:/// or postgresql:// URL, or a JSONL path)
    workdir: pathlib.Path
    emulator: RecordingEmulator
    key: str
    base_url: str
    in_process: bool
    cluster: PgCluster | None = None
    failures: list[str] = attrs.Factory(list)
    outcomes: list[Outcome] = attrs.Factory(list)
    faults: StoreFaults = attrs.field(init=False)
    disk: DiskFull = attrs.Factory(DiskFull)
    spooled: list[dict[str, Any]] = attrs.Factory(list)  # every spool entry seen
    paid_twice: set[str] = attrs.Factory(set)  # jobs found charged by two runs (said once)

    def __attrs_post_init__(self) -> None:
        s = self.schedule
        self.faults = StoreFaults(
            seed=s.seed,
            error_rate=s.error_rate,
            slow_rate=s.slow_rate,
            slow=s.slow if s.slow_rate else 0.0,
        )

    # -- stores and clients -------------------------------------------------------------------

    @property
    def jsonl(self) -> bool:
        return self.schedule.backend == "jsonl"

    @property
    def store_url(self) -> str:
        if self.jsonl:
            return self.url
        s = self.schedule
        options = f"retry_window={s.retry_window:g}&lease={s.lease:g}"
        options += f"&spool_dir={self.workdir / 'spool'}&statement_timeout=5"
        return f"{self.url}{'&' if '?' in self.url else '?'}{options}"

    def store(self, *, faulty: bool = False) -> SqlStore:
        store = open_store(self.store_url)
        assert isinstance(store, SqlStore)
        if faulty:
            self.faults.install(store)
        return store

    def actor_key(self, number: int) -> str:
        return f"{self.key}-a{number}"

    def requests_of(self, key: str) -> int:
        return sum(1 for k, _ in self.emulator.requests if k == key)

    def client(self, actor: Actor, key: str) -> AsyncNanoBanana:
        limits = actor.client_max_credits
        return AsyncNanoBanana(
            key,
            base_url=self.base_url,
            transport=self.emulator.transport() if self.in_process else None,
            limits=None if limits is None else LocalLimits(max_credits=limits),
            retry_policy=RetryPolicy(
                max_retries=actor.max_retries, initial_delay=0.001, max_delay=0.005
            ),
            retry_ambiguous=actor.retry_ambiguous,
            timeout=httpx.Timeout(10.0, pool=None),
        )

    # -- the schedule -----------------------------------------------------------------------

    async def check(self) -> list[str]:
        logs = _Collect()
        logger = logging.getLogger("nanobanana_async")
        logger.addHandler(logs)
        level = logger.level
        logger.setLevel(logging.DEBUG)
        self.emulator.faults = self.schedule.faults
        try:
            with self.disk.installed():
                await self._check()
        finally:
            logger.removeHandler(logs)
            logger.setLevel(level)
        text = "\n".join(logs.lines)
        if self.key in text:
            self.failures.append("the key is in the logs")
        return self.failures

    async def _check(self) -> None:
        s = self.schedule
        if s.added:
            await self.store().add(list(s.jobs))
        number = 0
        for round_number, round_ in enumerate(s.rounds, 1):
            await self._round(round_number, round_, number)
            number += len(round_.actors)
            await self._settle()
            self.failures += check_round(self, await self.snapshot(), round_number)
        if not self.jsonl:
            await self.store().recover()  # what `nanobanana jobs recover` does
            await self._expire_leases()
        last = Round((final_actor(s),), ())
        await self._round(len(s.rounds) + 1, last, number)
        await self._settle()
        self.failures += check_final(self, await self.snapshot())

    async def snapshot(self) -> Snapshot:
        return await snapshot(self)

    async def _round(self, round_number: int, round_: Round, first: int) -> None:
        done = anyio.Event()
        seen = len(self.emulator.requests)
        async with anyio.create_task_group() as events:
            events.start_soon(self._events, round_.events, seen, done)
            async with anyio.create_task_group() as actors:
                for offset, actor in enumerate(round_.actors):
                    outcome = Outcome(
                        round_number, first + offset, actor, self.actor_key(first + offset)
                    )
                    self.outcomes.append(outcome)
                    actors.start_soon(self._actor, outcome)
            done.set()
        self.faults.clear()
        self.faults.down = False
        self.disk.free()

    async def _actor(self, outcome: Outcome) -> None:
        if outcome.actor.kind in ("process", "cli"):
            await self._process(outcome)
        else:
            await self._task(outcome)

    async def _until(self, ready: Callable[[], bool], done: anyio.Event | None = None) -> bool:
        """Wait until ``ready()``; False if ``done`` was set first."""
        while not ready():
            if done is not None and done.is_set():
                return False
            await anyio.sleep(0.01)
        return True

    async def _events(self, events: tuple[Event, ...], seen: int, done: anyio.Event) -> None:
        for event in sorted(events, key=lambda e: e.after):

            def due(after: int = event.after) -> bool:
                return len(self.emulator.requests) - seen >= after

            if not await self._until(due, done):
                return
            await self._event(event)

    async def _event(self, event: Event) -> None:
        faults = self.faults
        if event.kind == "outage":
            faults.down = True
            try:
                await anyio.sleep(event.duration)
            finally:
                faults.down = False
        elif event.kind in ("restart", "crash"):
            assert self.cluster is not None
            if event.kind == "restart":
                await self.cluster.restart(downtime=event.duration, mode=event.mode)
            else:
                await self.cluster.crash(downtime=event.duration)
        elif event.kind == "disk_full":
            self.disk.fill(event.count * 40)
        else:
            faults.fail(
                event.count,
                match=event.statement,
                transient=event.kind != "refuse",
                after=event.kind == "lost",
            )

    async def _settle(self) -> None:
        # Requests whose client went away (a kill, a cancellation) may still run on the
        # server, and be charged when they end.
        with anyio.move_on_after(30):
            while True:
                seen = len(self.emulator.requests)
                await anyio.sleep(0.05)
                if not self.emulator.stats.in_flight and len(self.emulator.requests) == seen:
                    return

    async def _expire_leases(self) -> None:
        """Every run has ended: the leases they still hold (a session that could not close
        while the store was away) run out, as they would after ``lease`` seconds."""
        store = self.store()
        sql = store.statements.sql(
            "UPDATE {t} SET lease_until = {now} - 1 WHERE queue = {q} "
            "AND state IN ('claimed','sending')"
        )
        await store._once(lambda conn: store._execute(conn, sql, {}))

    # -- actors in this process ---------------------------------------------------------------

    def _run(self, actor: Actor, client: AsyncNanoBanana, store: JobStore) -> BatchRun:
        downloads = self.workdir / "images" if actor.downloads else None
        if actor.kind == "batch":
            return client.batch(
                [self.schedule.jobs[i] for i in actor.jobs],
                concurrency=actor.concurrency,
                max_credits=actor.max_credits,
                journal=store,
                download_dir=downloads,
            )
        return client.worker(
            store,
            concurrency=actor.concurrency,
            max_credits=actor.max_credits,
            download_dir=downloads,
            follow=actor.follow,
            poll_interval=actor.poll,
        )

    async def _task(self, outcome: Outcome) -> None:
        actor = outcome.actor
        store: JobStore = (
            JsonlStore(self.url, spool_dir=self.workdir / "spool")
            if self.jsonl
            else self.store(faulty=actor.store_faults)
        )
        results: list[JobResult] = []
        async with self.client(actor, outcome.key) as client:
            run = self._run(actor, client, store)
            graceful = GracefulStop(actor.grace) if actor.stop.startswith("graceful") else None
            if graceful is not None:
                graceful.watch(run)
            try:
                with anyio.CancelScope() as scope:
                    async with _one_error(), anyio.create_task_group() as tg:
                        tg.start_soon(self._stopper, outcome, run, graceful, scope)
                        async with run:
                            async for result in run:
                                results.append(result)
                                if actor.stop == "break" and len(results) >= actor.after:
                                    break
                        tg.cancel_scope.cancel()
            except NanoBananaError as exc:
                outcome.raised = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug: nothing but SDK errors may escape
                outcome.escaped = repr(exc)
            outcome.results = [result_entry(r) for r in run.report(results).results]
            outcome.reported = [r.index for r in results]

    async def _stopper(
        self,
        outcome: Outcome,
        run: BatchRun,
        graceful: GracefulStop | None,
        scope: anyio.CancelScope,
    ) -> None:
        stop = outcome.actor.stop
        if stop in ("none", "break"):
            return
        await self._trigger(outcome, lambda: False)
        if stop == "stop":
            run.stop("stopped by the checker", grace=outcome.actor.grace)
        elif stop == "cancel":
            scope.cancel()
        elif graceful is not None:
            graceful.request()
            if stop == "graceful_twice":
                await anyio.sleep(0.01)
                graceful.request()
        outcome.stopped = True

    async def _trigger(self, outcome: Outcome, ended: Callable[[], bool]) -> None:
        """Until the actor has sent ``after`` requests (or a while has passed)."""
        with anyio.move_on_after(FALLBACK):
            await self._until(
                lambda: ended() or self.requests_of(outcome.key) >= outcome.actor.after
            )

    # -- actors in processes of their own -----------------------------------------------------

    def _argv(self, outcome: Outcome) -> list[str]:
        actor, n = outcome.actor, outcome.number
        downloads = str(self.workdir / "images") if actor.downloads else None
        if actor.kind == "cli":
            argv = ["-m", "nanobanana_async", "worker", "--store", self.store_url]
            argv += ["--base-url", self.base_url, "-c", str(actor.concurrency)]
            argv += ["--grace", f"{actor.grace:g}"]
            if actor.max_credits is not None:
                argv += ["--max-credits", str(actor.max_credits)]
            if actor.follow:
                argv += ["--follow", "--poll", f"{actor.poll:g}"]
            if downloads:
                argv += ["-o", downloads]
            return argv
        s = self.schedule
        config = {
            "store": self.store_url,
            "base_url": self.base_url,
            "backend": actor.backend,
            "concurrency": actor.concurrency,
            "max_credits": actor.max_credits,
            "client_max_credits": actor.client_max_credits,
            "max_retries": actor.max_retries,
            "retry_ambiguous": actor.retry_ambiguous,
            "follow": actor.follow,
            "poll": actor.poll,
            "grace": actor.grace,
            "download_dir": downloads,
            "report": str(self.workdir / f"actor-{n}.report.json"),
            "faults": (
                {
                    "seed": s.seed * 100 + n,
                    "error_rate": s.error_rate,
                    "slow_rate": s.slow_rate,
                    "slow": s.slow if s.slow_rate else 0.0,
                }
                if actor.store_faults
                else None
            ),
        }
        path = self.workdir / f"actor-{n}.json"
        path.write_text(json.dumps(config))
        return ["-m", "tests.checker.worker", str(path)]

    def _ready(self, outcome: Outcome, out: pathlib.Path) -> Callable[[], bool]:
        if outcome.actor.kind == "process":
            marker = self.workdir / f"actor-{outcome.number}.report.json.ready"
            return marker.exists
        # The command line says how many jobs are pending just before it starts its run.
        return lambda: b"pending in" in out.read_bytes()

    async def _process(self, outcome: Outcome) -> None:
        actor, n = outcome.actor, outcome.number
        env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
        env.update(NANOBANANA_API_KEY=outcome.key, PYTHONUNBUFFERED="1", COLUMNS="160")
        out = self.workdir / f"actor-{n}.out"
        with open(out, "wb") as sink:  # noqa: ASYNC230 - a local file, opened once
            proc = subprocess.Popen(  # noqa: ASYNC220 - started, then polled without blocking
                [sys.executable, *self._argv(outcome)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

        def ended() -> bool:
            return proc.poll() is not None

        try:
            if actor.stop in ("sigterm", "sigkill"):
                # Once it handles SIGTERM (a signal before that ends it at once, as it should).
                ready = self._ready(outcome, out)
                with anyio.move_on_after(GUARD):
                    await self._until(lambda: ended() or ready())
                await self._trigger(outcome, ended)
                if proc.poll() is None:
                    outcome.early = self.requests_of(outcome.key) == 0
                    signo = signal.SIGTERM if actor.stop == "sigterm" else signal.SIGKILL
                    proc.send_signal(signo)
                    outcome.stopped = True
                    outcome.killed = signo == signal.SIGKILL
            with anyio.move_on_after(GUARD) as guard:
                await self._until(ended)
            if guard.cancelled_caught:
                outcome.escaped = f"process {n} still running after {GUARD:g} s: killed"
        finally:
            if proc.poll() is None:
                proc.kill()
            await anyio.to_thread.run_sync(proc.wait)
        outcome.exit = proc.returncode
        outcome.output = out.read_text(errors="replace")
        report = self.workdir / f"actor-{n}.report.json"
        if actor.kind == "process" and report.exists():
            data = json.loads(report.read_text())
            outcome.results = data["results"]
            outcome.reported = data["reported"]
            raised = data["raised"]
            outcome.ended_alone = outcome.stopped and data["signal"] is None
            if raised is not None:
                outcome.raised = f"{raised['type']}: {raised['message']}"


@contextlib.asynccontextmanager
async def _one_error() -> AsyncIterator[None]:
    """A task group's single error as itself (the run's, around the stopper task)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
