"""Ray Data against ``run_batch`` in one process (``python -m benchmarks --ray``).

Rows per second of ``nanobanana_async.ray.generate_images`` (2 actors x 32 requests in
flight, a Postgres job store) against ``run_batch`` in the benchmark's own process at the same
total concurrency (64), with and without that store, against the emulator in its own process
with 100 ms of latency. The Ray figures include what a user waits for: the actors' start-up
and the dataset's scheduling. A second execution of the same dataset (every row resumed from
the store, no request) shows what a lazy re-read costs. Starts a local Ray (2 CPUs, loopback)
and Debian's Postgres for the run.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable

import anyio
import attrs

from nanobanana_async import AsyncNanoBanana

from .clients import MODEL, jobs
from .servers import emulator_process
from .stores import postgres

SECTION = "## Ray Data"
LATENCY = 0.1
CONCURRENCY = 64
ACTORS = 2


@attrs.frozen
class RayRow:
    case: str
    rows: int
    ok: int
    wall: float

    @property
    def rate(self) -> float:
        return self.rows / self.wall


async def _batch(base_url: str, key: str, n: int, journal: str | None) -> tuple[int, float]:
    async with AsyncNanoBanana(key, base_url=base_url, max_retries=0) as client:
        started = time.perf_counter()
        report = await client.run_batch(jobs(n), concurrency=CONCURRENCY, journal=journal)
        return report.succeeded, time.perf_counter() - started


def _pipeline(base_url: str, key: str, n: int, store: str) -> Callable[[], tuple[int, float]]:
    """The Ray pipeline over ``n`` rows; each call executes it (again) and times it."""
    import ray.data

    from nanobanana_async.ray import generate_images

    rows = [{"id": f"row-{i}", "prompt": f"benchmark prompt {i}", "model": MODEL} for i in range(n)]
    images = generate_images(
        ray.data.from_items(rows),
        store=store,
        api_key=key,
        base_url=base_url,
        actors=ACTORS,
        concurrency=CONCURRENCY // ACTORS,
        max_retries=0,
    )

    def execute() -> tuple[int, float]:
        started = time.perf_counter()
        out = images.take_all()
        return sum(row["status"] == "succeeded" for row in out), time.perf_counter() - started

    return execute


def run(quick: bool, repeat: int) -> list[RayRow]:
    import ray

    n = 2000 if quick else 6000
    walls: dict[str, list[float]] = {}
    oks: dict[str, list[int]] = {}

    def keep(case: str, outcome: tuple[int, float]) -> None:
        oks.setdefault(case, []).append(outcome[0])
        walls.setdefault(case, []).append(outcome[1])
        print(f"  {case:52} {n / outcome[1]:6.0f} rows/s", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        with postgres() as new_database, emulator_process(LATENCY) as url:
            if new_database is None:
                raise SystemExit("PostgreSQL is not installed: apt-get install -y postgresql")
            for round_no in range(repeat):  # interleaved: noise hits every case alike
                key = f"nb-bench-ray-{round_no:04d}-{uuid.uuid4().hex[:8]}"
                keep("run_batch, one process, c64", anyio.run(_batch, url, key, n, None))
                keep(
                    "run_batch, one process, c64, Postgres store",
                    anyio.run(_batch, url, key + "s", n, new_database()),
                )
                execute = _pipeline(url, key + "r", n, new_database())
                pipeline = f"Ray Data, {ACTORS} actors x {CONCURRENCY // ACTORS}, Postgres store"
                keep(pipeline, execute())
                keep("the same dataset again (every row resumed)", execute())
    finally:
        ray.shutdown()
    return [
        RayRow(case, n, min(oks[case]), statistics.median(times)) for case, times in walls.items()
    ]


def render(rows: list[RayRow], quick: bool, repeat: int) -> str:
    ideal = rows[0].rows / CONCURRENCY * LATENCY if rows else 0.0
    lines = [
        SECTION,
        "",
        f"Produced by `python -m benchmarks --ray{' --quick' if quick else ''}` (median of "
        f"{repeat} interleaved runs). The emulator in its own process answers each request "
        f"after {int(LATENCY * 1000)} ms; {CONCURRENCY} requests in flight in every case, so "
        f"the ideal wall time is {ideal:.2f} s. `run_batch` runs in the benchmark's process on "
        f"asyncio; the Ray pipeline (`nanobanana_async.ray.generate_images`, batches of "
        f"{8 * CONCURRENCY // ACTORS} rows) on a local Ray started for the run (2 CPUs), "
        "including its actors' start-up. Postgres is Debian's, started for the run (fsync off). "
        f"{os.cpu_count()} CPUs shared by the driver, the actors, Ray's own processes, "
        "Postgres, the emulator and whatever else runs on the machine; load average when "
        f"written: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min).",
        "",
        "| case | rows | ok | wall s | rows/s | vs run_batch | efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = rows[0] if rows else None
    for r in rows:
        vs = f"{r.rate / ref.rate:.2f}" if ref else "n/a"
        lines.append(
            f"| {r.case} | {r.rows} | {r.ok} | {r.wall:.2f} | {r.rate:.0f} | {vs} "
            f"| {ideal / r.wall:.2f} |"
        )
    by_case = {r.case: r for r in rows}
    stored = by_case.get("run_batch, one process, c64, Postgres store")
    pipeline = next((r for r in rows if r.case.startswith("Ray Data")), None)
    if stored is not None and pipeline is not None:
        lines += [
            "",
            f"Against `run_batch` on the same store, the pipeline runs at "
            f"{pipeline.rate / stored.rate:.2f} of its rate: its wall time includes starting "
            "the actors, Ray's scheduling and moving each batch through Ray's object store, and "
            "each actor ends a batch with fewer and fewer requests in flight before it starts "
            "the next. On one machine it is a way to use Ray Data, not to go faster; on a "
            "cluster its actors spread over the nodes.",
        ]
    return "\n".join(lines) + "\n"
