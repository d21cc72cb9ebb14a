"""Kill and resume: ``nanobanana batch --journal`` SIGKILLed mid-run, then run again.

The emulator serves on a loopback socket from the test process, so its ledger and counters
outlive each CLI process. The CLI runs a few hundred prompts at concurrency 8 against it
with latency; it is killed (SIGKILL: no cleanup of any kind) once the journal holds some
lines, three times, and then run to completion with the same journal. Afterwards:

- every job has exactly one ``succeeded`` line in the journal, and the CLI exits 0;
- the jobs paid for twice are exactly the generations the emulator charged but no journal
  line recorded when the process died, and each kill loses at most the jobs in flight
  (``<= concurrency``): the journal line is written before a job's slot is freed.

Figures are printed (``pytest -s``) for the notes.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from nanobanana_async import DEFAULT_PRICING
from nanobanana_async.emulator import Emulator, Faults, RunningEmulator, serve

pytestmark = pytest.mark.slow

KEY = "sk-kill-resume-0123456789abcdef"
MODEL = "gemini-2.5-flash-image"
PRICE = DEFAULT_PRICING[MODEL]
JOBS = 400
CONCURRENCY = 8
START_CREDITS = 1_000_000
# Each run is killed once the journal holds this many more complete lines than before it.
KILL_AFTER_NEW_LINES = (60, 80, 100)


@pytest.fixture
def server() -> Iterator[RunningEmulator]:
    pytest.importorskip("uvicorn")
    emulator = Emulator(keys={KEY: START_CREDITS}, faults=Faults(latency=(0.02, 0.1)), seed=21)
    with serve(emulator, "127.0.0.1", 0) as running:
        yield running


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    # The key goes through the environment, as the CLI's help recommends (not in ps).
    env.update(NANOBANANA_API_KEY=KEY, COLUMNS="160", PYTHONUNBUFFERED="1")
    return env


def command(prompts: pathlib.Path, journal: pathlib.Path, base_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nanobanana_async",
        "batch",
        str(prompts),
        "--base-url",
        base_url,
        "--journal",
        str(journal),
        "--yes",
        "-c",
        str(CONCURRENCY),
    ]


def complete_lines(journal: pathlib.Path) -> int:
    try:
        return journal.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def records(journal: pathlib.Path) -> list[dict[str, Any]]:
    """Every parseable line; a line torn by a kill (not JSON) is left out."""
    parsed = []
    for line in journal.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            parsed.append(json.loads(line))
        except ValueError:
            continue
    return parsed


def succeeded_ids(journal: pathlib.Path) -> Counter[str]:
    return Counter(r["id"] for r in records(journal) if r.get("status") == "succeeded")


def wait_until_idle(running: RunningEmulator) -> None:
    # The server notices the dead client's connections and drops their requests uncharged.
    deadline = time.monotonic() + 10
    while running.emulator.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.emulator.stats.in_flight == 0


def test_sigkill_mid_batch_then_rerun_pays_at_most_the_jobs_in_flight_again(
    server: RunningEmulator, tmp_path: pathlib.Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"kill resume prompt {i}\n" for i in range(JOBS)))
    journal = tmp_path / "journal.jsonl"
    stats = server.emulator.stats
    argv = command(prompts, journal, server.base_url)
    lost_per_kill: list[int] = []
    kill_lines: list[int] = []
    in_flight_at_kill: list[int] = []

    for new_lines in KILL_AFTER_NEW_LINES:
        before_lines = complete_lines(journal)
        before_generations = stats.generations
        before_succeeded = sum(succeeded_ids(journal).values()) if journal.exists() else 0
        with (tmp_path / "stderr.txt").open("ab") as err:
            proc = subprocess.Popen(
                argv, env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
            try:
                deadline = time.monotonic() + 60
                while complete_lines(journal) < before_lines + new_lines:
                    assert proc.poll() is None, "the CLI ended before it could be killed"
                    assert time.monotonic() < deadline, "the journal did not grow"
                    time.sleep(0.005)
                in_flight_at_kill.append(stats.in_flight)
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        wait_until_idle(server)
        kill_lines.append(complete_lines(journal))
        # Paid during this run but not in the journal: what the next run will pay again.
        paid = stats.generations - before_generations
        journaled = sum(succeeded_ids(journal).values()) - before_succeeded
        lost_per_kill.append(paid - journaled)

    # Unfinished business: the journal does not yet hold every job.
    assert len(succeeded_ids(journal)) < JOBS
    final = subprocess.run(
        argv, env=cli_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False
    )
    assert final.returncode == 0, final.stderr.decode(errors="replace")
    wait_until_idle(server)

    ids = succeeded_ids(journal)
    duplicates = stats.generations - JOBS
    print(
        f"\nkill/resume: {JOBS} jobs at concurrency {CONCURRENCY}; killed with "
        f"{kill_lines} journal lines ({in_flight_at_kill} requests in flight at the server); "
        f"paid but unjournaled per kill {lost_per_kill}; {stats.generations} generations, "
        f"{duplicates} paid twice"
    )
    # Exactly one succeeded line per job, for every prompt of the file.
    assert len(ids) == JOBS
    assert set(ids.values()) == {1}
    prompts_done = {r["prompt"] for r in records(journal) if r.get("status") == "succeeded"}
    assert prompts_done == {f"kill resume prompt {i}" for i in range(JOBS)}
    # Paid twice: exactly what the kills lost, each kill at most the jobs in flight.
    assert duplicates == sum(lost_per_kill)
    assert all(0 <= lost <= CONCURRENCY for lost in lost_per_kill)
    assert stats.duplicate_charges == 0  # no logical call paid twice within one run
    assert START_CREDITS - server.emulator.balance(KEY) == PRICE * stats.generations
