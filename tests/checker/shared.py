"""The money checker across processes: several real processes (asyncio and Trio) on one
shared-limits namespace, Redis restarted under them (with and without an append-only file),
a process killed now and then, the emulator's ledger over loopback as the judge.

A schedule is drawn from one seed (``draw``) and run by :func:`check`, which returns every
broken invariant (empty means kept):

- the account is never charged more than the shared budget;
- while the ledger lives (an append-only file, or no restart), it covers the bill: spent +
  may have been spent + reserved >= charged;
- once Redis restarted without persistence, no request starts (the ledger is gone: every
  process refuses, and so does every process started afterwards);
- each process that ran to the end was charged at least what its report says it spent and
  at most that plus what it says may have been spent; a process refused before its first
  job was charged nothing;
- every process ends normally (exit 0, one report, no traceback), unless the schedule
  killed it.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import anyio
import attrs

from nanobanana_async import DEFAULT_PRICING, RedisLimits
from nanobanana_async.emulator import Faults, serve
from tests.support.redis_server import RedisServer

from .harness import RecordingEmulator

__all__ = ["Process", "Restart", "SharedSchedule", "check", "draw"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "sk-shared-checker-0123456789"
MODELS = ("gemini-2.5-flash-image", "gemini-2.5-flash-image-hd", "gemini-3-pro-image-preview")
# What a request admitted just before Redis went away may still start after it.
GRACE = 0.5


@attrs.frozen
class Process:
    backend: str
    start: float  # seconds after the schedule starts
    jobs: int
    concurrency: int
    models: tuple[str, ...]
    kill_at: float | None  # SIGKILL this many seconds after the schedule starts

    @property
    def cost(self) -> int:
        prices = [DEFAULT_PRICING[m] for m in self.models]
        return sum(prices[i % len(prices)] for i in range(self.jobs))


@attrs.frozen
class Restart:
    at: float  # seconds after the schedule starts
    down: float  # seconds Redis stays down


@attrs.frozen
class SharedSchedule:
    seed: int
    appendonly: bool
    budget: int
    max_per_second: float | None
    faults: Faults
    processes: tuple[Process, ...]
    restarts: tuple[Restart, ...]

    def describe(self) -> str:
        return (
            f"seed={self.seed} appendonly={self.appendonly} budget={self.budget} "
            f"max_per_second={self.max_per_second} faults={self.faults} "
            f"processes={list(self.processes)} restarts={list(self.restarts)}"
        )


def draw(seed: int) -> SharedSchedule:
    """The schedule for ``seed``."""
    rng = random.Random(seed)
    processes = tuple(
        Process(
            backend=rng.choice(("asyncio", "trio")),
            start=rng.choice((0.0, 0.0, rng.uniform(0, 3))),
            jobs=rng.randint(5, 30),
            concurrency=rng.choice((2, 4, 8, 16)),
            models=tuple(rng.sample(MODELS, rng.randint(1, 3))),
            kill_at=rng.choice((None, None, None, rng.uniform(0.5, 3))),
        )
        for _ in range(rng.randint(2, 4))
    )
    total = sum(p.cost for p in processes)
    restarts = tuple(
        sorted(
            (
                Restart(rng.uniform(0.3, 3), rng.choice((0.0, 0.3)))
                for _ in range(rng.randint(0, 2))
            ),
            key=lambda r: r.at,
        )
    )
    return SharedSchedule(
        seed=seed,
        appendonly=rng.random() < 0.5,
        budget=rng.randint(total // 4, total + 10),
        max_per_second=rng.choice((None, None, 40.0)),
        faults=Faults(
            latency=rng.choice(((0.02, 0.1), (0.05, 0.3))),
            server_error_rate=rng.choice((0.0, 0.1)),
            drop_rate=rng.choice((0.0, 0.0, 0.05)),
        ),
        processes=processes,
        restarts=restarts,
    )


def _worker(process: Process, tag: str, base_url: str, limits: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-W", "error", "-m", "tests.limits.worker", process.backend]
    argv += ["--base-url", base_url, "--limits", limits, "--key", KEY, "--tag", tag]
    argv += ["--jobs", str(process.jobs), "--concurrency", str(process.concurrency)]
    argv += ["--models", ",".join(process.models), "--max-retries", "1"]
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def check(schedule: SharedSchedule, server: RedisServer) -> list[str]:
    """Run ``schedule`` against ``server`` (restarted by it) and the emulator over loopback;
    the invariants it broke."""
    failures: list[str] = []
    namespace = f"checker-{schedule.seed}-{os.getpid()}"
    limits = f"{server.url}?namespace={namespace}&max_credits={schedule.budget}&lease=2"
    if schedule.max_per_second is not None:
        limits += f"&max_per_second={schedule.max_per_second:g}"
    if not schedule.appendonly:
        limits += "&allow_volatile=1"
    anyio.run(RedisLimits.from_url(limits).create)
    emulator = RecordingEmulator(faults=schedule.faults, seed=schedule.seed)
    wiped_at: float | None = None
    with serve(emulator) as served:
        began = time.monotonic()
        pending = sorted(
            [(p.start, "start", i) for i, p in enumerate(schedule.processes)]
            + [(p.kill_at, "kill", i) for i, p in enumerate(schedule.processes) if p.kill_at]
            + [(r.at, "restart", i) for i, r in enumerate(schedule.restarts)]
        )
        running: dict[int, subprocess.Popen[str]] = {}
        killed: set[int] = set()
        for at, what, index in pending:
            time.sleep(max(0.0, began + at - time.monotonic()))
            if what == "start":
                running[index] = _worker(
                    schedule.processes[index], f"p{index}", served.base_url, limits
                )
            elif what == "kill" and index in running and running[index].poll() is None:
                running[index].send_signal(signal.SIGKILL)
                killed.add(index)
            elif what == "restart":
                server.stop()
                if not schedule.appendonly:
                    server.wipe()
                    wiped_at = wiped_at or time.monotonic()
                time.sleep(schedule.restarts[index].down)
                server.start()
        reports: dict[int, dict[str, Any]] = {}
        for index, proc in running.items():
            out, err = proc.communicate(timeout=180)
            if index in killed and proc.returncode == -signal.SIGKILL:
                continue
            # Warnings may be logged (Redis away while settling); a traceback never.
            if proc.returncode != 0 or "Traceback" in err:
                failures.append(f"process {index} ended with {proc.returncode}: {err[-2000:]}")
                continue
            reports[index] = json.loads(out.strip().splitlines()[-1])
        time.sleep(0.3)  # requests the server still handles
        charges = list(emulator.charges)
        started = list(emulator.started)
        server.start()  # a schedule may end while it is down
    charged = Counter[str]()
    for api_key, prompt, credits in charges:
        if api_key == KEY:
            charged[prompt.partition(" ")[0]] += credits
    total = sum(charged.values())
    if total > schedule.budget:
        failures.append(f"charged {total} for a shared budget of {schedule.budget}")
    if wiped_at is not None:
        late = [round(t - wiped_at, 3) for t in started if t > wiped_at + GRACE]
        if late:
            failures.append(f"requests started after the ledger was lost, at +{late} s")
    else:
        status = anyio.run(RedisLimits.from_url(limits).status)
        covered = status.spent + status.uncertain + status.reserved
        if covered < total:
            failures.append(f"the ledger covers {covered} of the {total} charged")
    for index, report in reports.items():
        paid = charged[f"p{index}"]
        if "raised" in report:
            if paid:
                failures.append(f"process {index} was refused ({report}) yet charged {paid}")
            continue
        low, high = report["credits_spent"], report["credits_spent"] + report["may_have_been_spent"]
        if not low <= paid <= high:
            failures.append(f"process {index} charged {paid}, its report says {low}..{high}")
    return failures
