"""SIGTERM and SIGINT to the real command line, as Docker, Kubernetes, systemd and people send
them: ``nanobanana batch`` and ``nanobanana worker`` stop taking jobs, let the ones in flight
settle within ``--grace`` seconds, write the summary, metrics and gallery, and exit 143 (130
for SIGINT). Before, SIGTERM killed them at once with nothing written.

The emulator serves on a loopback socket from the test process: its ledger, which outlives
each process, is the judge of what was charged, checked against the journal and the metrics.
The command line runs on asyncio (it has no other backend); the same stop logic under Trio is
run by ``tests/batch/stores/graceful_worker.py`` below, in its own process too.
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from nanobanana_async import Job, open_store
from nanobanana_async.batch import DEFAULT_GRACE
from nanobanana_async.batch.stores import SqlStore, StoreStatus
from nanobanana_async.cli.stopping import DEFAULT_GRACE as CLI_DEFAULT_GRACE
from nanobanana_async.emulator import Emulator, Faults, RunningEmulator, serve
from tests.cli.test_cli import cli_env, command, stored_rows, wait_for_done, write
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "sk-signals-0123456789abcdef"
BALANCE = 1_000_000
PRICE = 2


def test_the_command_lines_default_grace_is_the_sdks() -> None:
    assert CLI_DEFAULT_GRACE == DEFAULT_GRACE


def env() -> dict[str, str]:
    return cli_env(NANOBANANA_API_KEY=KEY)


def spent(server: RunningEmulator) -> int:
    return BALANCE - server.emulator.balance(KEY)


def start(args: list[str], cwd: pathlib.Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args),
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Any, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
    while not condition():
        assert proc is None or proc.poll() is None, "the command ended before the signal"
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


def idle(server: RunningEmulator) -> None:
    # The server notices hang-ups (and charges them, with charge_on_hangup) a moment later.
    wait_until(lambda: server.emulator.stats.in_flight == 0)


def signalled(
    proc: subprocess.Popen[str], server: RunningEmulator, signum: int = signal.SIGTERM
) -> str:
    """Send ``signum``; once the command has ended and the server is idle, its stderr (after
    checking it ended with 128 + the signal, its summary, and no traceback)."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    idle(server)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert "Summary" in err
    return err


def store_of(tmp_path: pathlib.Path, jobs: list[Job]) -> str:
    """The URL of a SQLite store in ``tmp_path`` holding ``jobs``, pending."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    assert isinstance(store, SqlStore)
    anyio.run(store.add, jobs)
    return url


def status(url: str) -> StoreStatus:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    result: StoreStatus = anyio.run(store.status)
    return result


@pytest.fixture
def emulator_faults() -> Faults:
    return Faults(latency=0.4)


@pytest.fixture
def server(emulator_faults: Faults) -> Iterator[RunningEmulator]:
    pytest.importorskip("uvicorn")
    with serve(Emulator(keys={KEY: BALANCE}, faults=emulator_faults, seed=7)) as running:
        yield running


def test_sigterm_settles_the_batch_in_flight_and_writes_everything(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    jobs = 40
    write(tmp_path / "p.txt", "".join(f"a terminated prompt {i}\n" for i in range(jobs)))
    args = ["batch", "p.txt", "--base-url", server.base_url, "-o", "out", "--yes", "-c", "4"]
    args += ["--grace", "60", "--metrics-json", "out/metrics.json"]
    proc = start(args, tmp_path)
    wait_for_done(tmp_path / "out" / "journal.db", 4, proc)
    wait_until(lambda: server.emulator.stats.in_flight >= 2, proc)
    before = server.emulator.stats.generations
    in_flight = server.emulator.stats.in_flight
    err = signalled(proc, server)
    assert "Terminated (SIGTERM)" in err
    # The requests in flight at the signal were answered and kept; no new job was started.
    rows = stored_rows(tmp_path / "out")
    done = [r for r in rows if r["state"] == "done"]
    assert len(done) == server.emulator.stats.generations >= before + in_flight
    assert {r["state"] for r in rows} <= {"done", "skipped"}
    assert all(len(r["files"]) == 1 for r in done)
    # The ledger, the journal and the metrics agree.
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    assert metrics["signal"] == "SIGTERM"
    assert metrics["stopped_reason"].startswith("SIGTERM")
    assert metrics["credits"]["spent"] == spent(server) == PRICE * len(done)
    assert metrics["credits"]["may_have_been_spent"] == 0
    assert metrics["succeeded"] == len(done)
    gallery = (tmp_path / "out" / "index.html").read_text()
    assert gallery.count('class="card"') == len(rows)
    assert "Terminated (SIGTERM)" in gallery

    # The rerun finishes what was left, paying for nothing twice.
    args.remove("--metrics-json")
    args.remove("out/metrics.json")
    rerun = subprocess.run(command(*args), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert server.emulator.stats.generations == jobs
    assert server.emulator.stats.duplicate_charges == 0


@pytest.mark.parametrize("emulator_faults", [Faults(latency=30.0, charge_on_hangup_rate=1.0)])
def test_a_grace_that_runs_out_keeps_the_jobs_in_flight_as_ambiguous(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    # Requests that take 30 s, a grace of 0.5 s: they are cancelled, and the server charges
    # them anyway. They may have been charged, so they are counted so, and not sent again.
    write(tmp_path / "p.txt", "".join(f"a slow prompt {i}\n" for i in range(6)))
    args = ["batch", "p.txt", "--base-url", server.base_url, "-o", "out", "--yes", "-c", "3"]
    args += ["--grace", "0.5", "--metrics-json", "out/metrics.json"]
    proc = start(args, tmp_path)
    wait_until(lambda: server.emulator.stats.in_flight == 3, proc)
    err = signalled(proc, server)
    assert f"{3 * PRICE} more may have been spent" in err
    journal = status("sqlite:///" + str(tmp_path / "out" / "journal.db"))
    assert journal.counts == {"ambiguous": 3}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["credits"]["spent"] == journal.credits_spent == 0
    may = metrics["credits"]["may_have_been_spent"]
    assert may == journal.credits_may_have_been_spent == 3 * PRICE
    assert spent(server) == 3 * PRICE  # charged on hang-up: exactly what may have been spent

    server.emulator.faults = Faults()
    rerun = subprocess.run(command(*args), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 1, rerun.stderr  # the ambiguous ones are skipped, not re-sent
    assert server.emulator.stats.duplicate_charges == 0
    assert server.emulator.stats.generate_requests == 3 + 3


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An image host that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_ctrl_c_twice_while_images_download_counts_every_generation(
    tmp_path: pathlib.Path, blackhole: str
) -> None:
    pytest.importorskip("uvicorn")
    # The images never arrive: the downloads are in progress when Ctrl-C comes, twice.
    emulator = Emulator(keys={KEY: BALANCE}, image_base_url=blackhole, seed=9)
    with serve(emulator) as server:
        write(tmp_path / "p.txt", "".join(f"a stuck image {i}\n" for i in range(8)))
        args = ["batch", "p.txt", "--base-url", server.base_url, "-o", "out", "--yes", "-c", "4"]
        args += ["--metrics-json", "out/metrics.json"]
        proc = start(args, tmp_path)
        wait_until(lambda: emulator.stats.generations == 4, proc)
        time.sleep(0.2)  # the answers read, the downloads started (and stuck)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # the second one stops at once
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    journal = status("sqlite:///" + str(tmp_path / "out" / "journal.db"))
    charged = BALANCE - emulator.balance(KEY)
    assert charged == 4 * PRICE
    # Every charged generation is counted: in the metrics, the summary and the journal.
    assert metrics["credits"]["spent"] == journal.credits_spent == charged
    assert f"{charged} spent" in err
    assert metrics["failed"] == 4
    assert journal.counts == {"done": 4}  # generated: a rerun downloads, never pays again


def _worker_command(url: str, base_url: str, grace: str) -> list[str]:
    return ["worker", "--store", url, "--base-url", base_url, "-c", "4", "--grace", grace]


def test_sigterm_stops_a_worker_and_gives_back_what_it_did_not_start(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    url = store_of(tmp_path, [Job(f"a worker's prompt {i}", id=f"w{i}") for i in range(40)])
    proc = start(_worker_command(url, server.base_url, "60"), tmp_path)
    wait_for_done(tmp_path / "jobs.db", 4, proc)
    wait_until(lambda: server.emulator.stats.in_flight >= 2, proc)
    signalled(proc, server)
    after = status(url)
    done = after.counts.get("done", 0)
    assert done == server.emulator.stats.generations
    assert after.counts.get("pending", 0) == 40 - done  # nothing left claimed or sending
    assert spent(server) == after.credits_spent == PRICE * done


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_stops_run_worker_with_stop_on_signals(
    tmp_path: pathlib.Path, server: RunningEmulator, backend: str
) -> None:
    # The SDK's own way, for workers run from Python: stop_on_signals around run_worker.
    url = store_of(tmp_path, [Job(f"a python worker's prompt {i}", id=f"p{i}") for i in range(40)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.batch.stores.graceful_worker", url, server.base_url, backend],
        cwd=ROOT,
        env={**env(), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_done(tmp_path / "jobs.db", 4, proc)
    wait_until(lambda: server.emulator.stats.in_flight >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    idle(server)
    assert proc.returncode == 143, err
    report = json.loads(out)
    after = status(url)
    done = after.counts.get("done", 0)
    assert report["signal"] == "SIGTERM"
    assert report["stop_cause"] == "stopped"
    assert report["succeeded"] == done == server.emulator.stats.generations
    assert after.counts.get("pending", 0) == 40 - done
    assert spent(server) == after.credits_spent == report["credits_spent"]


@pytest.mark.parametrize("budget", ["--max-credits", "--limits"])
def test_a_worker_whose_budget_runs_out_exits_3(
    tmp_path: pathlib.Path, server: RunningEmulator, budget: str, request: pytest.FixtureRequest
) -> None:
    # Its own budget, or the shared one of RedisLimits (whose admission refuses the job
    # before it is sent: the worker used to claim it again and again, without end).
    if budget == "--limits":
        redis: RedisServer = request.getfixturevalue("redis_server")
        limits = f"{request.getfixturevalue('redis_url')}?namespace={redis.namespace()}"
        budget_args = ["--limits", f"{limits}&max_credits=5"]
        # A shared budget's ledger is made once, by an operator, before any worker runs.
        created = subprocess.run(
            command("limits", "create", *budget_args),
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
    else:
        budget_args = ["--max-credits", "5"]
    url = store_of(tmp_path, [Job(f"an expensive prompt {i}", id=f"e{i}") for i in range(6)])
    proc = subprocess.run(
        command(*_worker_command(url, server.base_url, "5"), *budget_args),
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "out of budget" in proc.stderr
    after = status(url)
    assert after.counts == {"done": 2, "pending": 4}
    assert spent(server) == after.credits_spent == 4
    # Ended at once: never claimed the skipped jobs again and again.
    assert server.emulator.stats.generate_requests == 2


@pytest.mark.parametrize("emulator_faults", [Faults(latency=0.4, charge_on_hangup_rate=1.0)])
def test_sigkill_with_the_default_journal_never_pays_twice(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    # The default journal (DIR/journal.db) records "sending" before a request leaves: a
    # SIGKILL (no handling of any kind) leaves the jobs in flight ambiguous, and the rerun
    # does not send them again. (The JSONL journal, the old default, paid for them twice.)
    jobs = 30
    write(tmp_path / "p.txt", "".join(f"a killed prompt {i}\n" for i in range(jobs)))
    args = ["batch", "p.txt", "--base-url", server.base_url, "-o", "out", "--yes", "-c", "4"]
    proc = start(args, tmp_path)
    wait_for_done(tmp_path / "out" / "journal.db", 4, proc)
    # The kill comes when every job recorded "sending" has reached the server: answers are
    # held from here on, and each of the 4 workers has sent one more request. (Killed while a
    # job was between its record and the server, that job would be ambiguous and never sent,
    # and the count below one short: it failed that way about 1 run in 5.)
    faults = server.emulator.faults
    server.emulator.faults = Faults(latency=60.0, charge_on_hangup_rate=1.0)
    held = server.emulator.stats.generate_requests
    wait_until(lambda: server.emulator.stats.generate_requests >= held + 4, proc)
    proc.kill()
    proc.communicate(timeout=60)
    idle(server)
    server.emulator.faults = faults
    rerun = subprocess.run(command(*args), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 1, rerun.stderr  # the ambiguous jobs are reported skipped
    stats = server.emulator.stats
    assert stats.generate_requests == jobs  # every job sent once, the killed ones included
    assert stats.duplicate_charges == 0
    journal = status("sqlite:///" + str(tmp_path / "out" / "journal.db"))
    ambiguous = journal.counts.get("ambiguous", 0)
    assert 1 <= ambiguous <= 4
    assert journal.counts.get("done", 0) == jobs - ambiguous
    # Charged on hang-up: the ledger is what was spent plus the ambiguous jobs whose request
    # had reached the server (one recorded "sending" may have died before it left).
    charged = stats.charged_idempotency_keys
    rows = stored_rows(tmp_path / "out")
    paid = [r for r in rows if r["state"] == "ambiguous" and r["idempotency_key"] in charged]
    assert spent(server) == journal.credits_spent + PRICE * len(paid)
    assert spent(server) <= journal.credits_spent + journal.credits_may_have_been_spent


def test_a_journal_jsonl_left_in_the_output_directory_is_resumed(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    # An earlier version journaled to DIR/journal.jsonl: the new default must not pay again.
    write(tmp_path / "p.txt", "".join(f"an older prompt {i}\n" for i in range(5)))
    base = ["batch", "p.txt", "--base-url", server.base_url, "-o", "out", "--yes"]
    older = subprocess.run(
        command(*base, "--journal", "out/journal.jsonl"),
        cwd=tmp_path, env=env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert older.returncode == 0, older.stderr
    newer = subprocess.run(command(*base), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert newer.returncode == 0, newer.stderr
    assert "Resuming from out/journal.jsonl" in newer.stderr
    assert "5 of 5 jobs already done" in newer.stderr
    assert server.emulator.stats.generations == 5
    assert not (tmp_path / "out" / "journal.db").exists()


DEFERRED = """
import os, signal, sys
from nanobanana_async.cli.stopping import Stop

stop = Stop()
with stop.deferred():  # the summary, metrics and gallery being written
    os.kill(os.getpid(), signal.SIGTERM)
    print("survived", stop.late.name, stop.exit_status, stop.label, flush=True)
print("restored", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
with Stop().deferred():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second one acts at once
    except KeyboardInterrupt:
        print("interrupted", flush=True)
with Stop().deferred():
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    print("never", flush=True)
"""


def test_a_signal_while_the_files_are_written_is_noted_not_obeyed() -> None:
    # In a process of its own: the last SIGTERM ends it, as a second one must.
    proc = subprocess.run(
        [sys.executable, "-c", DEFERRED], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout.splitlines() == [
        "survived SIGTERM 143 Terminated (SIGTERM)",
        "restored True",
        "interrupted",
    ], proc.stderr
    assert proc.returncode == -signal.SIGTERM


def test_a_worker_whose_account_runs_out_of_credits_exits_3(
    tmp_path: pathlib.Path, server: RunningEmulator
) -> None:
    poor = "sk-poor-0123456789abcdef"
    server.emulator.set_balance(poor, 4)  # two jobs' worth
    url = store_of(tmp_path, [Job(f"a costly prompt {i}", id=f"c{i}") for i in range(6)])
    proc = subprocess.run(
        command("worker", "--store", url, "--base-url", server.base_url, "-c", "1"),
        cwd=tmp_path,
        env=cli_env(NANOBANANA_API_KEY=poor),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "insufficient credits" in proc.stderr
    after = status(url)
    # The refused job failed (jobs retry --failed); the rest wait, pending, for credits.
    assert after.counts == {"done": 2, "failed": 1, "pending": 3}
    assert server.emulator.balance(poor) == 0
