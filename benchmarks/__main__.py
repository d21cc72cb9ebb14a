"""``python -m benchmarks [--quick] [--repeat N] [--output FILE] [--telemetry|--stores|--limits]``.

Starts the emulator in its own process (uvicorn, fixed latency) and measures, side by side in
one run, ``AsyncNanoBanana.run_batch`` (asyncio and Trio), hand-written httpx + semaphore and
hand-written aiohttp + semaphore; then the SDK's per-job CPU with in-process transports and the
peak RSS of a lazy 1,000,000-job batch in a subprocess. Each networked case runs ``--repeat``
times (clients interleaved) and the median is reported. Prints the tables and writes them to
``--output``. ``--telemetry`` measures only the per-job CPU of telemetry (spans, metrics,
hooks) against none, and rewrites only that section of ``--output``. ``--stores`` measures the
job stores (jobs/s of one worker on SQLite and Postgres against the JSONL journal, and the
memory of a million-job SQLite run and its resume; ``benchmarks/stores.py``) and rewrites only
their section. ``--limits`` measures only what shared limits cost (``benchmarks/limits.py``)
and rewrites that section; a full run keeps the telemetry and limits sections it finds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import anyio
import attrs
import httpx

from nanobanana_async._http.fast import FastTransport
from nanobanana_async.emulator import Emulator

from . import clients, stores
from . import limits as shared_limits
from .memory import trivial_transport
from .telemetry import existing_section, render_telemetry, splice, telemetry_cases

ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def emulator_process(latency: float) -> Iterator[str]:
    """The emulator under uvicorn in a child process; yields its base URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nanobanana_async.emulator",
            "--port",
            "0",
            "--latency",
            str(latency),
            "--credits",
            "100000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http"):
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield line
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@attrs.frozen
class Row:
    client: str
    concurrency: int
    latency: float
    requests: int
    ok: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    @property
    def efficiency(self) -> float:
        ideal = self.requests / self.concurrency * self.latency
        return ideal / self.wall if self.latency else float("nan")


Runner = Callable[[str, str, int, int], Awaitable[clients.Outcome]]


def _runners() -> dict[str, tuple[str, Runner]]:
    return {
        "sdk": ("asyncio", lambda u, k, n, c: clients.sdk(u, k, n, c, None)),
        "sdk-trio": ("trio", lambda u, k, n, c: clients.sdk(u, k, n, c, None)),
        "httpx": ("asyncio", lambda u, k, n, c: clients.raw_httpx(u, k, n, c, None)),
        "aiohttp": ("asyncio", clients.raw_aiohttp),
    }


def _median_row(name: str, c: int, latency: float, outcomes: list[clients.Outcome]) -> Row:
    walls = sorted(outcomes, key=lambda o: o.wall)
    mid = walls[len(walls) // 2]
    return Row(name, c, latency, mid.requests, min(o.ok for o in outcomes), mid.wall, mid.cpu)


def network_cases(quick: bool, repeat: int) -> list[Row]:
    rows: list[Row] = []
    concurrencies = [16, 128, 256] if quick else [16, 128, 256, 1024]
    runners = _runners()
    key_no = 0
    for latency in (0.0, 0.1):
        with emulator_process(latency) as url:
            for c in concurrencies:
                if latency == 0:
                    n = 1000 if quick else 3000
                else:  # at least four waves; c16 is slow by construction (latency-bound)
                    n = max(1000 if quick or c <= 16 else 2000, 4 * c)
                results: dict[str, list[clients.Outcome]] = {name: [] for name in runners}
                for attempt in range(repeat):
                    for name, (backend, run) in runners.items():
                        if name == "httpx" and latency and attempt:
                            continue  # minutes per run at 100 ms: measured once
                        key_no += 1
                        key = f"nb-bench-key-{key_no:08d}-xxxxxxxx"
                        outcome = anyio.run(run, url, key, n, c, backend=backend)
                        results[name].append(outcome)
                for name, outcomes in results.items():
                    row = _median_row(name, c, latency, outcomes)
                    rows.append(row)
                    print(
                        f"  {name:9} c={c:<5} latency={latency:.1f}s  {row.rate:8.0f} req/s  "
                        f"eff {row.efficiency:.2f}  ok {row.ok}/{row.requests}",
                        flush=True,
                    )
    return rows


@attrs.frozen
class CpuRow:
    transport: str
    sdk_us: float
    raw_us: float


def cpu_cases(quick: bool) -> list[CpuRow]:
    """Per-job CPU in-process: the SDK's run_batch against raw httpx on the same transport."""
    n = 3000 if quick else 20000
    out: list[CpuRow] = []
    makers: list[tuple[str, Callable[[], httpx.AsyncBaseTransport]]] = [
        ("trivial (canned response)", trivial_transport),
        ("emulator.transport()", lambda: Emulator(seed=0).transport()),
    ]
    for label, make in makers:
        sdk = anyio.run(clients.sdk, "http://127.0.0.1:1", "nb-bench-0123456789", n, 64, make())
        raw = anyio.run(
            clients.raw_httpx, "http://127.0.0.1:1", "nb-bench-0123456789", n, 64, make()
        )
        if sdk.ok != n or raw.ok != n:
            raise RuntimeError(f"in-process run failed: {sdk} {raw}")
        out.append(CpuRow(label, sdk.cpu / n * 1e6, raw.cpu / n * 1e6))
        print(f"  {label}: sdk {out[-1].sdk_us:.0f} us/job, raw httpx {out[-1].raw_us:.0f} us/job")
    return out


def memory_case(quick: bool) -> dict[str, float]:
    n = 100_000 if quick else 1_000_000
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", str(n), "64"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - started
    print(f"  {n} jobs: peak RSS {result['rss_peak']:.1f} MiB in {result['seconds']:.0f}s")
    return result


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fmt_eff(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def render(
    rows: list[Row], cpu: list[CpuRow], memory: dict[str, float], quick: bool, repeat: int
) -> str:
    versions = ", ".join(
        f"{d} {_version(d)}" for d in ("httpx", "httpcore", "aiohttp", "anyio", "trio", "uvicorn")
    )
    uses = "aiohttp" if FastTransport().uses_aiohttp else "h11 over anyio streams"
    lines = [
        "# Benchmarks",
        "",
        "Produced by `python -m benchmarks"
        + (" --quick" if quick else "")
        + f"` (medians of {repeat} runs per case, clients interleaved).",
        "",
        f"- Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()} ({platform.machine()})",
        f"- Versions: {versions}",
        f"- SDK transport on asyncio: {uses}; on Trio: h11 over anyio streams",
        "- Server: the package's emulator in its own process under uvicorn, answering every "
        "generate request after a fixed latency, over loopback.",
        "- Efficiency = ideal wall time / measured wall time, ideal = requests / concurrency x "
        "latency. `vs aiohttp` is the ratio to plain aiohttp + semaphore in the same run "
        "(efficiency at 100 ms, requests/s at 0 ms).",
        "- Plain httpx at 100 ms runs once per case (it takes minutes); every other row is the "
        "median of the runs.",
        "- Clients: `sdk` = `AsyncNanoBanana.run_batch` with its default transport on asyncio, "
        "`sdk-trio` the same under Trio, `httpx` = one `httpx.AsyncClient` with limits sized "
        "to an `anyio.Semaphore`, `aiohttp` = one `aiohttp.ClientSession` + semaphore.",
        "",
        "## Throughput over loopback",
        "",
        "| latency | concurrency | client | requests | ok | wall s | req/s | efficiency "
        "| vs aiohttp | client CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r.client, r.concurrency, r.latency): r for r in rows}
    for r in rows:
        ref = by_key.get(("aiohttp", r.concurrency, r.latency))
        if ref is None:
            ratio = "n/a"
        elif r.latency:
            ratio = f"{r.efficiency / ref.efficiency:.2f}"
        else:
            ratio = f"{r.rate / ref.rate:.2f}"
        lines.append(
            f"| {int(r.latency * 1000)} ms | {r.concurrency} | {r.client} | {r.requests} | {r.ok} "
            f"| {r.wall:.2f} | {r.rate:.0f} | {_fmt_eff(r.efficiency)} | {ratio} | {r.cpu:.2f} |"
        )
    lines += [
        "",
        "## Per-job CPU in-process (concurrency 64, no socket)",
        "",
        "| transport | SDK run_batch us/job | raw httpx + semaphore us/job | SDK overhead us/job |",
        "|---|---|---|---|",
    ]
    for c in cpu:
        lines.append(
            f"| {c.transport} | {c.sdk_us:.0f} | {c.raw_us:.0f} | {c.sdk_us - c.raw_us:.0f} |"
        )
    lines += [
        "",
        "## Memory",
        "",
        f"A lazy generator of {int(memory['jobs']):,} jobs through `client.batch(...)` "
        "(concurrency 64, results consumed and dropped) with an in-process transport, in its "
        "own process: peak RSS (`VmHWM`; `ru_maxrss` "
        f"{memory.get('maxrss', 0):.1f} MiB, which Linux carries over from the parent process) "
        f"**{memory['rss_peak']:.1f} MiB** (after imports: {memory['rss_start']:.1f} MiB), "
        f"{int(memory['succeeded']):,} succeeded, {memory['seconds']:.0f} s.",
        "",
        "## Targets",
        "",
    ]
    lines += targets(rows, memory)
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
## How the SDK's transport is chosen

`AsyncNanoBanana` without `http_client=` or `transport=` builds an `httpx.AsyncClient` on
`nanobanana_async._http.fast.FastTransport`:

- on asyncio with `aiohttp` installed (`pip install 'nanobanana-async[aiohttp]'`), requests go
  through one aiohttp connection pool (no connection limit: the batch bounds concurrency), and
  aiohttp's failures are mapped to the httpx exceptions httpcore raises for the same situation,
  so retries and the "may have been charged" verdict are unchanged. Generate requests go
  straight to that pool without building httpx request and response objects, which were most
  of the client's CPU per request;
- under Trio, or without aiohttp, requests go through a small HTTP/1.1 connection pool of the
  SDK's own (`h11` over anyio streams): httpcore 1.0's pool bookkeeping grows with the square
  of the connections in one pool, and even in small pools it cost about 1 ms of CPU per request
  under Trio;
- when respx (or anything else) has patched httpcore's pool, requests go through httpcore so
  the mock sees every request. A caller's `http_client=` or `transport=` is used as is.

What is left of the gap to plain aiohttp is CPU per request on the client side (the SDK's
per-job path on asyncio; h11 header validation, httpx and Trio itself under Trio). It shows
once the client process saturates a core: the emulator uses the other one on this 2-CPU
machine, so wall-clock figures move with whatever else runs on it.
"""


def targets(rows: list[Row], memory: dict[str, float]) -> list[str]:
    by_key = {(r.client, r.concurrency, r.latency): r for r in rows}
    out: list[str] = []

    def check(label: str, value: float, goal: float) -> None:
        verdict = "met" if value >= goal else "NOT met"
        out.append(f"- {label}: {value:.2f} (target >= {goal:.2f}) - {verdict}")

    ref, sdk, trio = (by_key.get((n, 256, 0.1)) for n in ("aiohttp", "sdk", "sdk-trio"))
    if ref and sdk and trio:
        check("efficiency at c256/100 ms, SDK / aiohttp", sdk.efficiency / ref.efficiency, 0.95)
        check("efficiency at c256/100 ms under Trio", trio.efficiency, 0.6)
    ref0, sdk0 = by_key.get(("aiohttp", 128, 0.0)), by_key.get(("sdk", 128, 0.0))
    if ref0 and sdk0:
        check("requests/s at c128/0 ms, SDK / aiohttp", sdk0.rate / ref0.rate, 0.5)
    peak = memory["rss_peak"]
    verdict = "met" if peak < 150 else "NOT met"
    out.append(
        f"- peak RSS of the {int(memory['jobs']):,}-job batch: {peak:.1f} MiB (< 150) - {verdict}"
    )
    return out


def store_cases(quick: bool, repeat: int, skip_memory: bool) -> str:
    """The job store benchmarks, as the markdown section of docs/benchmarks.md."""
    print("job stores: jobs/s at c128/100 ms:", flush=True)
    with emulator_process(0.1) as url:
        rows = stores.throughput(url, quick, repeat)
    mem = None
    if not skip_memory:
        print("job stores: memory:", flush=True)
        mem = stores.memory(quick)
    return stores.render(rows, mem)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer cases and requests")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (3; quick 1)")
    parser.add_argument(
        "--output", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file to write"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1M-job RSS case")
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="only the telemetry overhead (per-job CPU, tracing/metrics/hooks on vs off)",
    )
    parser.add_argument(
        "--stores", action="store_true", help="only the job store cases (their section)"
    )
    parser.add_argument("--skip-stores", action="store_true", help="skip the job store cases")
    parser.add_argument(
        "--limits",
        action="store_true",
        help="only RedisLimits against local limits (starts redis-server); rewrites that section",
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    output = pathlib.Path(args.output) if args.output != "-" else None
    if args.telemetry:
        print("telemetry overhead, per-job CPU:", flush=True)
        section = render_telemetry(
            telemetry_cases(args.quick, repeat, lambda: emulator_process(0.0)), args.quick
        )
        print()
        print(section)
        if output is not None:
            output.write_text(splice(output.read_text() if output.exists() else "", section))
            print(f"written to {args.output}")
        return
    if args.stores:
        section = store_cases(args.quick, repeat, args.skip_memory)
        print()
        print(section)
        if output is not None:
            existing = output.read_text() if output.exists() else "# Benchmarks\n"
            output.write_text(stores.replace_section(existing, section))
            print(f"written to {args.output}")
        return
    if args.limits:
        print("shared limits:", flush=True)
        section = shared_limits.render(shared_limits.run(args.quick, repeat), args.quick, repeat)
        print()
        print(section)
        if output is not None:
            existing = output.read_text() if output.exists() else ""
            output.write_text(shared_limits.splice(existing, section))
            print(f"written to {args.output}")
        return
    print("throughput over loopback:", flush=True)
    rows = network_cases(args.quick, repeat)
    print("per-job CPU in-process:", flush=True)
    cpu = cpu_cases(args.quick)
    print("memory:", flush=True)
    memory: dict[str, float] = (
        {"jobs": 0.0, "succeeded": 0.0, "rss_start": 0.0, "rss_peak": 0.0, "seconds": 0.0}
        if args.skip_memory
        else memory_case(args.quick)
    )
    text = render(rows, cpu, memory, args.quick, repeat)
    if not args.skip_stores:
        text += "\n" + store_cases(args.quick, repeat, args.skip_memory)
    # The telemetry and limits sections are measured on their own: carried over as they were.
    existing = output.read_text() if output is not None and output.exists() else ""
    kept = existing_section(existing)
    if kept is not None:
        text = splice(text, kept)
    kept_limits = shared_limits.section_of(existing)
    if kept_limits is not None:
        text = shared_limits.splice(text, kept_limits)
    print()
    print(text)
    if output is not None:
        output.write_text(text)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
