"""Job stores: a batch's jobs/s with a SQLite store against the JSONL journal, in-process
(the store's own cost) and against the emulator; Postgres workers (1, 2 and 4 processes);
and the peak RSS of a million-job batch recorded in SQLite and of its resume.

``python -m benchmarks --stores`` runs only these and rewrites the "Job stores" section of
docs/benchmarks.md; a full ``python -m benchmarks`` includes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import attrs
import httpx

from nanobanana_async import AsyncNanoBanana, open_store
from nanobanana_async.batch.stores import SqlStore

from .clients import jobs

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = "## Job stores"


@attrs.frozen
class StoreRow:
    case: str
    backend: str
    jobs: int
    ok: int
    wall: float
    cpu: float = 0.0  # client CPU seconds (in-process runs only)

    @property
    def rate(self) -> float:
        return self.jobs / self.wall


@contextlib.contextmanager
def postgres() -> Iterator[Callable[[], str] | None]:
    """A throwaway Postgres server (Debian's binaries; fsync off), or None without them."""
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import PgCluster, pg_bin

    binaries = pg_bin()
    if binaries is None:
        yield None
        return
    cluster = PgCluster.start(binaries)
    try:
        yield lambda: cluster.create_database(f"bench_{uuid.uuid4().hex[:10]}")
    finally:
        cluster.stop()


async def _batch(base_url: str, key: str, n: int, concurrency: int, journal: str) -> StoreRow:
    async with AsyncNanoBanana(key, base_url=base_url, max_retries=0) as client:
        started = time.perf_counter()
        report = await client.run_batch(jobs(n), concurrency=concurrency, journal=journal)
        wall = time.perf_counter() - started
    return StoreRow("", "", n, report.succeeded, wall)


async def _worker(base_url: str, key: str, n: int, concurrency: int, url: str) -> StoreRow:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    await store.add(jobs(n))
    async with AsyncNanoBanana(key, base_url=base_url, max_retries=0) as client:
        started = time.perf_counter()
        report = await client.run_worker(store, concurrency=concurrency)
        wall = time.perf_counter() - started
    return StoreRow("", "", n, report.succeeded, wall)


def throughput(base_url: str, quick: bool, repeat: int) -> list[StoreRow]:
    """jobs/s at concurrency 128 against the emulator (100 ms latency) at ``base_url``."""
    n, concurrency = (2000 if quick else 4000), 128
    runs: dict[tuple[str, str], list[StoreRow]] = {}
    key_no = 0
    with postgres() as new_database, tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, str, Callable[[], str], bool]] = [
            ("JSONL journal, batch", "asyncio", lambda: f"{tmp}/{uuid.uuid4().hex}.jsonl", False),
            ("JSONL journal, batch", "trio", lambda: f"{tmp}/{uuid.uuid4().hex}.jsonl", False),
            ("SQLite, batch", "asyncio", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex}.db", False),
            ("SQLite, worker", "asyncio", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex}.db", True),
            ("SQLite, worker", "trio", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex}.db", True),
        ]
        if new_database is not None:
            cases += [
                ("Postgres, batch", "asyncio", new_database, False),
                ("Postgres, worker", "asyncio", new_database, True),
                ("Postgres, worker", "trio", new_database, True),
            ]
        for _ in range(repeat):
            for case, backend, target, worker in cases:  # interleaved: noise hits all alike
                key_no += 1
                key = f"nb-bench-store-{key_no:08d}-xxxxxxxx"
                run = _worker if worker else _batch
                row = anyio.run(run, base_url, key, n, concurrency, target(), backend=backend)
                runs.setdefault((case, backend), []).append(
                    attrs.evolve(row, case=case, backend=backend)
                )
    return _medians(runs)


_OK = b'{"code":0,"message":"ok","data":{"url":"https://img.example/1.png"}}'


async def _canned(n: int, journal: str) -> StoreRow:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_OK, headers={"content-type": "application/json"})

    async with AsyncNanoBanana(
        "nb-bench-0123456789abcdef",
        base_url="http://127.0.0.1:1",
        transport=httpx.MockTransport(answer),
        max_retries=0,
    ) as client:
        started, cpu = time.perf_counter(), time.process_time()
        report = await client.run_batch(jobs(n), concurrency=128, journal=journal)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return StoreRow("", "", n, report.succeeded, wall, cpu)


def in_process(quick: bool, repeat: int) -> list[StoreRow]:
    """jobs/s of ``run_batch`` at concurrency 128 with a canned in-process answer: the client
    and its store alone, JSONL and SQLite interleaved, each run on a new file."""
    n = 5000 if quick else 20_000
    runs: dict[tuple[str, str], list[StoreRow]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, Callable[[], str]]] = [
            ("JSONL journal, batch", lambda: f"{tmp}/{uuid.uuid4().hex}.jsonl"),
            ("SQLite, batch", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"),
        ]
        for _ in range(repeat):
            for backend in ("asyncio", "trio"):
                for case, target in cases:
                    row = anyio.run(_canned, n, target(), backend=backend)
                    runs.setdefault((case, backend), []).append(
                        attrs.evolve(row, case=case, backend=backend)
                    )
    return _medians(runs)


def _medians(runs: dict[tuple[str, str], list[StoreRow]]) -> list[StoreRow]:
    rows = []
    for outcomes in runs.values():
        median = sorted(outcomes, key=lambda r: r.wall)[len(outcomes) // 2]
        rows.append(attrs.evolve(median, ok=min(r.ok for r in outcomes)))
        print(f"  {median.case:22} {median.backend:7} {median.rate:7.0f} jobs/s", flush=True)
    return rows


def postgres_workers(base_url: str, quick: bool, repeat: int) -> list[StoreRow]:
    """jobs/s of 1, 2 and 4 worker processes (concurrency 64 each) sharing a Postgres store,
    against the emulator at ``base_url``: from the moment they all start to the last one's end."""
    n = 2000 if quick else 6000
    runs: dict[tuple[str, str], list[StoreRow]] = {}
    with postgres() as new_database:
        if new_database is None:
            return []
        for attempt in range(repeat):
            for workers in (1, 2, 4):
                url = new_database()
                anyio.run(_add, url, n)
                key = f"nb-bench-pgw-{attempt:02d}{workers}-xxxxxxxxxxxx"
                procs = [
                    subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.store_worker", url, base_url, key, "64"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        cwd=ROOT,
                    )
                    for _ in range(workers)
                ]
                time.sleep(1.5)  # imports and connections: not timed
                started = time.perf_counter()
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                ok = 0
                for proc in procs:
                    out, _ = proc.communicate()
                    ok += int(json.loads(out.strip().splitlines()[-1])["succeeded"])
                wall = time.perf_counter() - started
                name = f"Postgres, {workers} worker{'s' if workers > 1 else ''}"
                runs.setdefault((name, "asyncio"), []).append(
                    StoreRow(name, "asyncio", n, ok, wall)
                )
    return _medians(runs)


async def _add(url: str, n: int) -> None:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    await store.add(jobs(n))


def memory(quick: bool) -> dict[str, dict[str, float]]:
    """Peak RSS of an N-job batch recorded in SQLite, then of its resume (own processes)."""
    n = 100_000 if quick else 1_000_000
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in ("run", "resume"):
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.store_memory", str(n), f"{tmp}/jobs.db", "64"],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
            result["seconds"] = time.perf_counter() - started
            out[phase] = result
            print(
                f"  {phase}: {n} jobs, peak RSS {result['rss_peak']:.1f} MiB, "
                f"{int(result['sent'])} sent, {result['seconds']:.0f}s",
                flush=True,
            )
    return out


def render(
    rows: list[StoreRow],
    mem: dict[str, dict[str, float]] | None,
    canned: list[StoreRow] | None = None,
    workers: list[StoreRow] | None = None,
) -> str:
    lines = [SECTION, ""]
    if canned:
        lines += _render_canned(canned)
    if workers:
        lines += _render_workers(workers)
    lines += [
        "Produced by `python -m benchmarks --stores` (part of a full run). One worker process "
        "against the emulator in its own process (100 ms latency, loopback), concurrency 128, "
        "median of the runs. `batch` is `run_batch(jobs, journal=...)`; `worker` is "
        "`run_worker(store)` over jobs added beforehand (timed: the worker only). Postgres is "
        "Debian's server started for the run (fsync off), on the same machine. "
        f"{os.cpu_count()} CPUs; load average when written: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min): with other work "
        "running, absolute rates fall with the CPU left, and the ratios are what to read.",
        "",
        "| store | mode | event loop | jobs | ok | wall s | jobs/s | vs JSONL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    refs = {r.backend: r for r in rows if r.case.startswith("JSONL")}
    for r in rows:
        store, mode = r.case.split(", ")
        ref = refs.get(r.backend)
        ratio = f"{r.rate / ref.rate:.2f}" if ref else "n/a"
        lines.append(
            f"| {store} | {mode} | {r.backend} | {r.jobs} | {r.ok} | {r.wall:.2f} | "
            f"{r.rate:.0f} | {ratio} |"
        )
    if mem:
        run, resume = mem["run"], mem["resume"]
        lines += [
            "",
            f"Memory: a lazy generator of {int(run['jobs']):,} jobs through `client.batch(..., "
            'journal="sqlite:///...")` (concurrency 64, an in-process transport answering at '
            "once, results dropped), in its own process, then the same command again (the "
            "resume):",
            "",
            "| run | succeeded | resumed | requests sent | peak RSS MiB | after imports MiB | s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in (("first", run), ("resume", resume)):
            lines.append(
                f"| {name} | {int(m['succeeded']):,} | {int(m['resumed']):,} | {int(m['sent']):,} "
                f"| {m['rss_peak']:.1f} | {m['rss_start']:.1f} | {m['seconds']:.0f} |"
            )
        lines.append("")
        for name, m in (("run", run), ("resume", resume)):
            verdict = "met" if m["rss_peak"] < 150 else "NOT met"
            lines.append(f"- peak RSS of the {name}: {m['rss_peak']:.1f} MiB (< 150) - {verdict}")
        lines.append(
            f"- the resume sent {int(resume['sent'])} requests (target 0) - "
            + ("met" if resume["sent"] == 0 else "NOT met")
        )
        lines.append(
            "\nWith an upstream answering at once the run is bound by CPU: each job's two "
            "store writes (sending, done) go through group commit on the event loop's thread, "
            "and the wall time also depends on the CPU other work leaves (see the load above)."
        )
    return "\n".join(lines) + "\n"


def _render_canned(rows: list[StoreRow]) -> list[str]:
    lines = [
        f"In-process: `run_batch(jobs, concurrency=128, journal=...)` of {rows[0].jobs:,} jobs "
        "with a canned answer (an `httpx.MockTransport`: no network, no server), so the client "
        "and its store are all there is; JSONL and SQLite interleaved, each run on a new file, "
        "median of the runs (by wall time). The run is bound by the client's CPU: on a loaded "
        "machine the process gets less of it and wall times stretch, so the CPU per job "
        "(and its ratio, the speed the store would allow with a core to itself) is given too. "
        "Load average when written: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) on "
        f"{os.cpu_count()} CPUs.",
        "",
        "| store | event loop | jobs | ok | wall s | jobs/s | vs JSONL | CPU us/job "
        "| JSONL's CPU / this CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    refs = {r.backend: r for r in rows if r.case.startswith("JSONL")}
    verdicts = []
    for r in rows:
        ref = refs[r.backend]
        lines.append(
            f"| {r.case.split(', ')[0]} | {r.backend} | {r.jobs} | {r.ok} | {r.wall:.2f} | "
            f"{r.rate:.0f} | {r.rate / ref.rate:.2f} | {r.cpu / r.jobs * 1e6:.0f} | "
            f"{ref.cpu / r.cpu:.2f} |"
        )
        if r is not ref:
            verdict = "met" if r.rate >= 0.8 * ref.rate else "NOT met"
            verdicts.append(
                f"- SQLite batch in-process ({r.backend}): {r.rate / ref.rate:.2f}x the JSONL "
                f"journal's jobs/s (target >= 0.80) - {verdict}"
            )
    return [*lines, "", *verdicts, ""]


def _render_workers(rows: list[StoreRow]) -> list[str]:
    one = rows[0].rate
    lines = [
        "Postgres workers: 1, 2 and 4 `nanobanana worker`-like processes (`run_worker`, "
        f"concurrency 64 each) draining one queue of {rows[0].jobs:,} jobs against the "
        "emulator in its own process (100 ms latency), timed from their common start to the "
        "last one's end; Postgres started for the run (fsync off). Every process shares the "
        "machine's CPUs with the emulator and Postgres.",
        "",
        "| workers | jobs | ok | wall s | jobs/s | vs 1 worker |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case.split(', ')[1]} | {r.jobs} | {r.ok} | {r.wall:.2f} | {r.rate:.0f} | "
            f"{r.rate / one:.2f} |"
        )
    return [*lines, ""]
