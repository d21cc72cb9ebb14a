"""What RedisLimits cost per job against the default LocalLimits (``python -m benchmarks
--limits``): the latency one call gains (one round trip to a local Redis: its admission,
which also carries the settlement of the call before), the client CPU per job at concurrency
64 (in-process transport), and batch throughput at concurrency 128 over loopback with 100 ms
of server latency, on asyncio and Trio, caps set so high that none binds, side by side in one
run. Starts its own redis-server (Debian's package, with an append-only file); a budget's
ledger is created first, as an operator does.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import attrs

from nanobanana_async import AsyncNanoBanana, Limits, LocalLimits, RedisLimits

from .clients import jobs
from .memory import trivial_transport

SECTION = "## Shared limits (RedisLimits)"
NO_CAP = {"max_credits": 10**12, "max_per_second": 100_000}


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server with an append-only file (as docs/scaling.md runs it); yields its URL."""
    from tests.support.redis_server import RedisServer, find_redis_server

    binary = find_redis_server()
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    with tempfile.TemporaryDirectory(prefix="nanobanana-bench-redis-") as tmp:
        server = RedisServer(binary, pathlib.Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


LimitsMaker = Callable[[], Limits]


async def _ready(make: LimitsMaker) -> Limits:
    """New limits; a budget gets its ledger first, as an operator creates it."""
    limits = make()
    if isinstance(limits, RedisLimits) and limits.max_credits is not None:
        await limits.create()
    return limits


def _makers(url: str) -> dict[str, LimitsMaker]:
    def redis(**caps: float) -> LimitsMaker:
        return lambda: RedisLimits(url, namespace=f"bench-{uuid.uuid4().hex[:8]}", **caps)  # type: ignore[arg-type]

    return {
        "local (default)": LocalLimits,
        "redis, no caps (admit)": redis(),
        "redis, rate + budget (admit + settle)": redis(**NO_CAP),
    }


@attrs.frozen
class Measure:
    limits: str
    backend: str
    call_us: float  # median wall time of one sequential generate
    cpu_us: float  # client CPU per job of a batch at concurrency 64, in-process
    rate: float  # jobs/s of a batch at concurrency 128 over loopback, 100 ms latency
    redis_us: float  # Redis's CPU per job during those batches (INFO cpu)


async def _sequential(make: LimitsMaker, n: int) -> float:
    times = []
    async with AsyncNanoBanana(
        "nb-bench-0123456789", base_url="http://127.0.0.1:1", transport=trivial_transport(),
        limits=await _ready(make),
    ) as nb:  # fmt: skip
        for i in range(n):
            started = time.perf_counter()
            await nb.generate(f"sequential {i}")
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def _cpu(make: LimitsMaker, n: int) -> float:
    async with AsyncNanoBanana(
        "nb-bench-0123456789", base_url="http://127.0.0.1:1", transport=trivial_transport(),
        limits=await _ready(make),
    ) as nb:  # fmt: skip
        await nb.generate("warm up")
        cpu = time.process_time()
        report = await nb.run_batch(jobs(n), concurrency=64)
        used = time.process_time() - cpu
    if report.succeeded != n:
        raise RuntimeError(f"in-process batch failed: {report.succeeded}/{n}")
    return used / n * 1e6


async def _redis_cpu(url: str) -> float:
    """Seconds of CPU the Redis at ``url`` used so far (user and system)."""
    from nanobanana_async.limits.redis.resp import Connection, Target

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    connection = await Connection.open(Target("127.0.0.1", port, None))
    try:
        info = await connection.call("INFO", "cpu")
    finally:
        await connection.aclose()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def _throughput(make: LimitsMaker, url: str, base_url: str, n: int) -> tuple[float, float]:
    async with AsyncNanoBanana(
        f"nb-bench-{uuid.uuid4().hex}", base_url=base_url, limits=await _ready(make), max_retries=0
    ) as nb:
        redis_cpu = await _redis_cpu(url)
        started = time.perf_counter()
        report = await nb.run_batch(jobs(n), concurrency=128)
        wall = time.perf_counter() - started
        redis_cpu = await _redis_cpu(url) - redis_cpu
    if report.succeeded != n:
        raise RuntimeError(f"loopback batch failed: {report.succeeded}/{n}")
    return n / wall, redis_cpu / n * 1e6


LOAD: list[float] = []  # load averages (1 min) at the start and the end of the run


def run(quick: bool, repeat: int) -> list[Measure]:
    from .servers import emulator_process

    sequential_n, cpu_n, net_n = (300, 2000, 1000) if quick else (1000, 10000, 2000)
    out: list[Measure] = []
    LOAD.append(os.getloadavg()[0])
    with redis_server() as url, emulator_process(0.1) as base_url:
        makers = _makers(url)
        for backend in ("asyncio", "trio"):
            rates: dict[str, list[float]] = {name: [] for name in makers}
            redis_us: dict[str, list[float]] = {name: [] for name in makers}
            for _ in range(repeat):  # interleaved, so a noisy moment hits every case
                for name, make in makers.items():
                    rate, cpu = anyio.run(_throughput, make, url, base_url, net_n, backend=backend)
                    rates[name].append(rate)
                    redis_us[name].append(cpu)
            for name, make in makers.items():
                call = anyio.run(_sequential, make, sequential_n, backend=backend)
                cpu = anyio.run(_cpu, make, cpu_n, backend=backend)
                rate, server = statistics.median(rates[name]), statistics.median(redis_us[name])
                row = Measure(name, backend, call, cpu, rate, server)
                out.append(row)
                print(
                    f"  {backend:7} {name:37} call {row.call_us:6.0f} us  cpu {row.cpu_us:5.0f}"
                    f" us/job  c128/100ms {row.rate:6.0f} jobs/s, Redis {server:3.0f} us/job",
                    flush=True,
                )
    LOAD.append(os.getloadavg()[0])
    return out


def render(rows: list[Measure], quick: bool, repeat: int) -> str:
    lines = [
        SECTION,
        "",
        "Produced by `python -m benchmarks --limits"
        + (" --quick" if quick else "")
        + f"` (throughput: median of {repeat} interleaved runs). Redis 7 from Debian on this "
        "machine over loopback, with an append-only file; caps so high that none binds. "
        "Load average (1 min) at the start and the end: "
        + " and ".join(f"{load:.1f}" for load in LOAD)
        + " (on 2 CPUs: other work on the machine moves these figures).",
        "",
        "- call: median wall time of one `generate` in sequence (in-process transport): what a "
        "call waits for its limits;",
        "- CPU: client CPU per job of `run_batch` at concurrency 64 (in-process transport);",
        "- c128: jobs/s of `run_batch` at concurrency 128 against the emulator in its own "
        "process with 100 ms latency, and the CPU Redis used per job meanwhile (`INFO cpu`): "
        "Redis shares the machine's two cores with the client and the emulator.",
        "",
        "| loop | limits | call us | added us/call | CPU us/job | added CPU us/job "
        "| c128 jobs/s | vs local | Redis CPU us/job |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    local = {r.backend: r for r in rows if r.limits.startswith("local")}
    for r in rows:
        ref = local[r.backend]
        lines.append(
            f"| {r.backend} | {r.limits} | {r.call_us:.0f} | {r.call_us - ref.call_us:.0f} "
            f"| {r.cpu_us:.0f} | {r.cpu_us - ref.cpu_us:.0f} | {r.rate:.0f} "
            f"| {r.rate / ref.rate:.2f} | {r.redis_us:.0f} |"
        )
    lines += ["", "Targets:", ""]
    for r in rows:
        if r.limits.startswith("local"):
            continue
        ref = local[r.backend]
        added = max(r.call_us - ref.call_us, r.cpu_us - ref.cpu_us) / 1000
        ratio = r.rate / ref.rate
        lines.append(
            f"- {r.backend}, {r.limits}: {added:.2f} ms/job added (target < 1) - "
            f"{'met' if added < 1 else 'NOT met'}; c128 throughput {ratio:.2f} of local "
            f"(target >= 0.90) - {'met' if ratio >= 0.9 else 'NOT met'}"
        )
    return "\n".join(lines) + "\n"
