"""``python -m benchmarks [--quick] [--repeat N] [--output docs/benchmarks.md] [--only PARTS]``.

Measures, side by side in one run, ``AsyncNanoBanana.run_batch`` (asyncio and Trio),
hand-written httpx + semaphore and hand-written aiohttp + semaphore against two servers, each
in its own process: the emulator under uvicorn, and a cheap asyncio Protocol server
(``benchmarks/cheap_server.py``) that costs the machine almost nothing, so that the clients
are what is measured. Each case runs ``--repeat`` times, clients interleaved; rows are medians
and every ratio is the median of the per-round ratios. Then: the SDK's per-job CPU with
in-process transports against raw httpx, start-up times in fresh interpreters, a profile of
where a job's CPU goes, and the peak RSS of a lazy 1,000,000-job batch. Prints the tables and
writes them to ``--output``.

``--telemetry`` (``benchmarks/telemetry.py``), ``--stores`` (``benchmarks/stores.py``),
``--limits`` (``benchmarks/limits.py``) and ``--ray`` (``benchmarks/ray_pipeline.py``) measure
only their part and rewrite only their section of ``--output``; a full run measures the job
stores too (unless ``--skip-stores``) and carries over every section it did not measure.
``--only network,cpu,startup,profile,memory`` runs some parts and prints them without writing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import attrs
import httpx

from nanobanana_async.emulator import Emulator

from . import clients, profile, ray_pipeline, startup, stores
from . import limits as shared_limits
from .memory import trivial_transport
from .profile import ProfileRow
from .sections import replace_section, section_of
from .servers import SERVERS, emulator_process, server_process
from .startup import ModulesRow, StartupRow
from .telemetry import SECTION as TELEMETRY
from .telemetry import render_telemetry, telemetry_cases

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARTS = ("network", "cpu", "startup", "profile", "memory", "stores")
TARGETS = "## Targets"


@attrs.frozen
class Row:
    server: str
    client: str
    concurrency: int
    latency: float
    requests: int
    ok: int
    wall: float
    cpu: float
    server_cpu: float
    vs_aiohttp: float  # median of the per-round ratios (efficiency at latency, else req/s)

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    @property
    def efficiency(self) -> float:
        ideal = self.requests / self.concurrency * self.latency
        return ideal / self.wall if self.latency else float("nan")


Runner = Callable[[str, str, int, int], Awaitable[clients.Outcome]]


def _runners(server: str, latency: float) -> dict[str, tuple[str, Runner]]:
    runners: dict[str, tuple[str, Runner]] = {
        "aiohttp": ("asyncio", clients.raw_aiohttp),
        "aiohttp-anyio": ("asyncio", lambda u, k, n, c: clients.raw_aiohttp(u, k, n, c, "anyio")),
        "sdk": ("asyncio", lambda u, k, n, c: clients.sdk(u, k, n, c, None)),
        "sdk-trio": ("trio", lambda u, k, n, c: clients.sdk(u, k, n, c, None)),
    }
    if server == "emulator" or not latency:
        # Plain httpx at 100 ms takes minutes per run: against the emulator only.
        runners["httpx"] = (
            "asyncio",
            lambda u, k, n, c: clients.raw_httpx(u, k, n, c, None, "plain"),
        )
    return runners


def _cases(server: str, quick: bool) -> list[tuple[float, int, int]]:
    """(latency, concurrency, requests) per case."""
    if server == "cheap":
        zero = [16, 128] if quick else [16, 128, 1024]
        slow = [256] if quick else [256, 1024]
        n0 = 2000 if quick else 5000
    else:
        zero = [128] if quick else [16, 128, 256, 1024]
        slow = [256] if quick else [16, 128, 256, 1024]
        n0 = 1000 if quick else 3000
    cases = [(0.0, c, n0) for c in zero]
    # At least four waves at 100 ms; c16 is latency-bound by construction (slow to run).
    cases += [(0.1, c, max(1000 if quick or c <= 16 else 2000, 4 * c)) for c in slow]
    return cases


def network_cases(servers: tuple[str, ...], quick: bool, repeat: int) -> list[Row]:
    rows: list[Row] = []
    key_no = 0
    for server in servers:
        for latency in sorted({case[0] for case in _cases(server, quick)}):
            runners = _runners(server, latency)
            with server_process(server, latency) as proc:
                for backend, run in runners.values():  # warm up: imports, first connections
                    key_no += 1
                    anyio.run(
                        run, proc.url, f"nb-bench-key-{key_no:08d}-x", 64, 16, backend=backend
                    )
                for case_latency, c, n in _cases(server, quick):
                    if case_latency != latency:
                        continue
                    outcomes: dict[str, list[clients.Outcome]] = {name: [] for name in runners}
                    server_cpu: dict[str, list[float]] = {name: [] for name in runners}
                    ratios: dict[str, list[float]] = {name: [] for name in runners}
                    for attempt in range(repeat):
                        this_round: dict[str, clients.Outcome] = {}
                        for name, (backend, run) in runners.items():
                            if name == "httpx" and latency and attempt:
                                continue  # minutes per run at 100 ms: measured once
                            key_no += 1
                            key = f"nb-bench-key-{key_no:08d}-xxxxxxxx"
                            before = proc.cpu()
                            outcome = anyio.run(run, proc.url, key, n, c, backend=backend)
                            server_cpu[name].append(proc.cpu() - before)
                            outcomes[name].append(outcome)
                            this_round[name] = outcome
                        ref = this_round["aiohttp"]
                        for name, outcome in this_round.items():
                            # Efficiency at a latency (the same ideal for both) and
                            # requests/s at 0 ms: both aiohttp's wall time over the client's.
                            ratios[name].append(ref.wall / outcome.wall)
                    for name, runs in outcomes.items():
                        mid = sorted(runs, key=lambda o: o.wall)[len(runs) // 2]
                        row = Row(
                            server,
                            name,
                            c,
                            latency,
                            mid.requests,
                            min(o.ok for o in runs),
                            mid.wall,
                            statistics.median(o.cpu for o in runs),
                            statistics.median(server_cpu[name]),
                            statistics.median(ratios[name]),
                        )
                        rows.append(row)
                        print(
                            f"  {server:8} {name:9} c={c:<5} latency={latency:.1f}s "
                            f"{row.rate:8.0f} req/s  eff {_fmt_eff(row.efficiency)}  "
                            f"vs aiohttp {row.vs_aiohttp:.2f}  ok {row.ok}/{row.requests}",
                            flush=True,
                        )
    return rows


@attrs.frozen
class CpuRow:
    transport: str
    client: str
    us_per_job: float
    vs_httpx: float  # median of the per-round ratios to raw httpx on asyncio


#: Per-job CPU of the SDK's run_batch on a canned in-process answer when issue 15 was opened
#: (docs/benchmarks.md then), and of raw httpx + semaphore in that same run.
OLD_CANNED_SDK_US, OLD_CANNED_HTTPX_US = 187.0, 203.0


def cpu_cases(quick: bool, repeat: int) -> list[CpuRow]:
    """Per-job CPU in-process: the SDK's run_batch against raw httpx on the same transport."""
    n = 3000 if quick else 20000
    rounds = max(repeat, 5)
    makers: list[tuple[str, Callable[[], httpx.AsyncBaseTransport]]] = [
        ("canned answer (httpx.MockTransport)", trivial_transport),
        ("emulator.transport()", lambda: Emulator(seed=0).transport()),
    ]
    url, key = "http://127.0.0.1:1", "nb-bench-0123456789"
    runs: dict[str, Callable[[httpx.AsyncBaseTransport], clients.Outcome]] = {
        "raw httpx + semaphore (asyncio)": lambda t: anyio.run(
            clients.raw_httpx, url, key, n, 64, t
        ),
        "SDK run_batch (asyncio)": lambda t: anyio.run(clients.sdk, url, key, n, 64, t),
        "SDK run_batch (Trio)": lambda t: anyio.run(
            clients.sdk, url, key, n, 64, t, backend="trio"
        ),
    }
    out: list[CpuRow] = []
    for label, make in makers:
        per_job: dict[str, list[float]] = {name: [] for name in runs}
        ratios: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():  # warm up
            run(make())
        for _ in range(rounds):
            this_round: dict[str, float] = {}
            for name, run in runs.items():
                outcome = run(make())
                if outcome.ok != n:
                    raise RuntimeError(f"in-process run failed: {name} {outcome}")
                this_round[name] = outcome.cpu / n * 1e6
                per_job[name].append(this_round[name])
            for name, value in this_round.items():
                ratios[name].append(value / this_round["raw httpx + semaphore (asyncio)"])
        for name in runs:
            row = CpuRow(
                label, name, statistics.median(per_job[name]), statistics.median(ratios[name])
            )
            out.append(row)
            print(
                f"  {label}: {name:32} {row.us_per_job:5.0f} us/job "
                f"({row.vs_httpx:.2f}x raw httpx)",
                flush=True,
            )
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


def profile_cases(quick: bool) -> list[ProfileRow]:
    n = 2000 if quick else 6000
    rows = profile.profile_case(
        "in-process canned answer, asyncio", "http://127.0.0.1:1", n, 64, "asyncio", True
    )
    with server_process("cheap", 0.0) as proc:
        rows += profile.profile_case("cheap server, asyncio", proc.url, n, 128, "asyncio")
        rows += profile.profile_case("cheap server, Trio", proc.url, n, 128, "trio")
        rows += profile.profile_case(
            "cheap server, plain aiohttp (asyncio.Semaphore + TaskGroup)",
            proc.url,
            n,
            128,
            "asyncio",
            client=clients.raw_aiohttp,
        )
    return rows


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fmt_eff(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


@attrs.define
class Results:
    rows: list[Row] = attrs.Factory(list)
    cpu: list[CpuRow] = attrs.Factory(list)
    startup: list[StartupRow] = attrs.Factory(list)
    modules: list[ModulesRow] = attrs.Factory(list)
    profile: list[ProfileRow] = attrs.Factory(list)
    memory: dict[str, float] | None = None
    load_before: str = ""
    load_after: str = ""


def render(results: Results, quick: bool, repeat: int) -> str:
    versions = ", ".join(
        f"{d} {_version(d)}"
        for d in ("httpx", "httpcore", "h11", "aiohttp", "anyio", "trio", "uvicorn")
    )
    lines = [
        "# Benchmarks",
        "",
        "Produced by `python -m benchmarks"
        + (" --quick" if quick else "")
        + f"` (medians of {repeat} runs per case, clients interleaved).",
        "",
        f"- Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()} ({platform.machine()}); load average "
        f"(1 / 5 / 15 min) {results.load_before} when the run started, {results.load_after} "
        "when it ended. The machine is shared: absolute figures move with whatever else runs, "
        "so every comparison is a ratio measured side by side in the same run.",
        f"- Versions: {versions}",
        "- SDK transport: its own h11 pool, on a native asyncio stream under asyncio and on "
        "anyio's streams under Trio; plain aiohttp is only the baseline",
    ]
    lines += _render_network(results.rows)
    lines += _render_cpu(results.cpu)
    lines += _render_startup(results.startup, results.modules)
    lines += _render_profile(results.profile)
    if results.memory is not None:
        memory = results.memory
        lines += [
            "",
            "## Memory",
            "",
            f"A lazy generator of {int(memory['jobs']):,} jobs through `client.batch(...)` "
            "(concurrency 64, results consumed and dropped) with an in-process transport, in "
            "its own process: peak RSS (`VmHWM`; `ru_maxrss` "
            f"{memory.get('maxrss', 0):.1f} MiB, which Linux carries over from the parent "
            f"process) **{memory['rss_peak']:.1f} MiB** (after imports: "
            f"{memory['rss_start']:.1f} MiB), {int(memory['succeeded']):,} succeeded, "
            f"{memory['seconds']:.0f} s.",
        ]
    lines += ["", TARGETS, "", *targets(results)]
    return "\n".join(lines) + "\n" + NOTES


def _render_network(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Throughput over loopback",
        "",
        "- Servers, each in its own process on the same machine: `emulator` = the package's "
        "emulator under uvicorn, answering every generate request after a fixed latency; "
        "`cheap` = `benchmarks/cheap_server.py`, an asyncio Protocol answering a fixed success "
        "body after the latency, at a small fraction of the emulator's CPU per request (the "
        "`server CPU s` column), so that the clients are what is measured. On 2 CPUs the "
        "emulator's cost compresses every client towards its own limit at 0 ms.",
        "- Clients: `aiohttp` = one `aiohttp.ClientSession`, an `asyncio.Semaphore` and an "
        "`asyncio.TaskGroup`, as an asyncio user writes it (the baseline of every ratio); "
        "`aiohttp-anyio` = the same with `anyio.Semaphore` and an anyio task group; `sdk` = "
        "`AsyncNanoBanana.run_batch` with its default transport (its own h11 pool) on asyncio; "
        "`sdk-trio` the same under Trio; `httpx` = one `httpx.AsyncClient` with limits "
        "sized to an `asyncio.Semaphore`, in an `asyncio.TaskGroup` (at 100 ms only against "
        "the emulator, once per case: it takes minutes).",
        "- Efficiency = ideal wall time / measured wall time, ideal = requests / concurrency "
        "x latency. `vs aiohttp` = the median over the rounds of the ratio to plain aiohttp "
        "in the same round (efficiency at 100 ms, requests/s at 0 ms: both are aiohttp's "
        "wall time over the client's).",
        "",
        "| server | latency | concurrency | client | requests | ok | wall s | req/s "
        "| efficiency | vs aiohttp | client CPU s | CPU us/req | server CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.server} | {int(r.latency * 1000)} ms | {r.concurrency} | {r.client} "
            f"| {r.requests} | {r.ok} | {r.wall:.2f} | {r.rate:.0f} | {_fmt_eff(r.efficiency)} "
            f"| {r.vs_aiohttp:.2f} | {r.cpu:.2f} | {r.cpu / r.requests * 1e6:.0f} "
            f"| {r.server_cpu:.2f} |"
        )
    return lines


def _render_cpu(cpu: list[CpuRow]) -> list[str]:
    if not cpu:
        return []
    lines = [
        "",
        "## Per-job CPU in-process (concurrency 64, no socket)",
        "",
        "Client CPU per job of `run_batch` over an in-process httpx transport, against what a "
        "user would write with raw httpx + `anyio.Semaphore` on the same transport; clients "
        "interleaved, medians over the rounds (the ratio: of the per-round ratios). When "
        "issue 15 was opened the SDK took "
        f"{OLD_CANNED_SDK_US:.0f} us/job on the canned answer, raw httpx "
        f"{OLD_CANNED_HTTPX_US:.0f} ({OLD_CANNED_SDK_US / OLD_CANNED_HTTPX_US:.2f}x).",
        "",
        "| transport | client | CPU us/job | vs raw httpx |",
        "|---|---|---|---|",
    ]
    for c in cpu:
        lines.append(f"| {c.transport} | {c.client} | {c.us_per_job:.0f} | {c.vs_httpx:.2f} |")
    return lines


def _render_startup(rows: list[StartupRow], modules: list[ModulesRow]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Start-up",
        "",
        "Each command in a fresh interpreter (byte-code already written), commands interleaved "
        "round after round; medians of the wall and CPU times, and the median of the per-round "
        "ratios to `import httpx`.",
        "",
        "| command | wall ms | CPU ms | vs `import httpx` |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r.command}` | {r.wall_ms:.0f} | {r.cpu_ms:.0f} | {r.vs_httpx:.2f} |")
    if modules:
        lines += [
            "",
            "Packages in `sys.modules` after each command (a fresh interpreter each), of "
            f"{', '.join(f'`{m}`' for m in startup.WATCHED)}:",
            "",
            "| command | loaded | of which httpx's or httpcore's own imports |",
            "|---|---|---|",
        ]
        for m in modules:
            lines.append(
                f"| `{m.command}` | {', '.join(m.loaded) or 'none'} "
                f"| {', '.join(m.via_httpx) or '-'} |"
            )
        package = next((m for m in modules if m.command == "import nanobanana_async"), None)
        lazy = package is not None and "httpx" not in package.loaded
        lines += [
            "",
            "httpx imports `click`, `rich` and `pygments` at its own import whenever all three "
            "are installed (`httpx._main`, the `httpx` command line; here `click` comes with "
            "uvicorn and `rich` with the `cli` extra), and httpcore imports `trio` whenever "
            "it is installed: the SDK cannot prevent either once it imports them. "
            + (
                "`import nanobanana_async` imports neither httpx nor httpcore: the public names "
                "load on first use (PEP 562), so those packages arrive with the first name that "
                "needs httpx (the client), not with the package."
                if lazy
                else "`import nanobanana_async` imports httpx (and so what httpx brings)."
            ),
        ]
    return lines


def _render_profile(rows: list[ProfileRow]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Where the time goes",
        "",
        "`run_batch` under cProfile (after a warm-up run), own time grouped by package. "
        "cProfile adds a cost to every Python call, so call-heavy code is over-weighted next "
        "to C (sockets, json, the selector): read the shares, and the calls per job, which do "
        "not move with the machine's load.",
        "",
        PROFILE_NOTE,
        "",
    ]
    by_case: dict[str, list[ProfileRow]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    for case, case_rows in by_case.items():
        calls = sum(r.calls_per_job for r in case_rows)
        lines += [
            f"**{case}** ({calls:.0f} Python calls per job):",
            "",
            "| group | share of CPU | calls/job |",
            "|---|---|---|",
        ]
        for r in case_rows:
            if r.share >= 0.005:
                lines.append(f"| {r.group} | {r.share:.0%} | {r.calls_per_job:.0f} |")
        lines.append("")
    return lines[:-1]


PROFILE_NOTE = """Where the SDK on asyncio spends its CPU next to plain aiohttp (c=128/0 ms, cheap
server; compare the tables of the SDK on asyncio and of plain aiohttp below). The SDK speaks
HTTP through its own h11 pool on a native asyncio stream (`_net/asyncio_stream.py`): its
transport layer (`SDK: transports`) is a far smaller share of its CPU than aiohttp, yarl and
multidict are of plain aiohttp's, and the event loop makes fewer Python calls per job for the
SDK than for plain aiohttp. What the SDK spends on top is its own code per job: the batch runner's
money path, the client's request and answer, retry, models and errors, anyio (the batch's task
group and limiter, a cancel scope per request), plus the built-in calls they make."""


NOTES = """
## How the SDK's transport is chosen

`AsyncNanoBanana` without `http_client=` or `transport=` builds an `httpx.AsyncClient` on
`nanobanana_async._http.fast.FastTransport`:

- on asyncio and under Trio alike, requests go through a small HTTP/1.1 connection pool of the
  SDK's own (`h11`, no connection limit: the batch bounds concurrency), on a native asyncio
  stream under asyncio and on anyio's streams under Trio. Its failures are mapped to the httpx
  exceptions httpcore raises for the same situation, so retries and the "may have been
  charged" verdict are the same as on httpx's own transport. Generate requests go straight to
  that pool without building httpx request and response objects, which were most of the
  client's CPU per request. httpcore 1.0's own pool is not used: its bookkeeping grows with
  the square of the connections in one pool, and even in small pools it cost about 1 ms of
  CPU per request under Trio;
- when respx (or anything else) has patched httpcore's pool, requests go through httpcore so
  the mock sees every request. A caller's `http_client=` or `transport=` is used as is.

On asyncio the SDK used to send requests through an aiohttp pool of its own when aiohttp was
installed. Once the h11 pool had its asyncio stream it matched plain aiohttp's requests/s
(1.01x at c=128/0 ms on the cheap server) at about 188 us of client CPU per request, against
0.58x and about 364 us for the aiohttp path, and it used less CPU per request at the other
points measured too (c=1024, c=256 at 100 ms, the emulator), so the aiohttp path was removed
(docs/architecture.md, "Why the SDK has its own transports"). Plain aiohttp is only the
baseline here.

What is left of any gap to plain aiohttp is CPU per request on the client side. It shows once
the client process saturates a core: the server uses the other one on this 2-CPU machine, so
wall-clock figures move with whatever else runs on it.
"""


def _row(rows: list[Row], server: str, client: str, c: int, latency: float) -> Row | None:
    return next(
        (
            r
            for r in rows
            if (r.server, r.client, r.concurrency, r.latency) == (server, client, c, latency)
        ),
        None,
    )


def targets(results: Results) -> list[str]:
    out: list[str] = []

    def check(
        label: str, value: float, goal: float, *, below: bool = False, unit: str = ""
    ) -> None:
        met = value <= goal if below else value >= goal
        sign = "<=" if below else ">="
        out.append(
            f"- {label}: {value:.2f}{unit} (target {sign} {goal:.2f}{unit}) - "
            + ("met" if met else "NOT met")
        )

    rows = results.rows
    for server, client, c, latency, goal, what in (
        ("cheap", "sdk-trio", 256, 0.1, 0.97, "efficiency"),
        ("cheap", "sdk-trio", 128, 0.0, 0.9, "requests/s"),
        ("cheap", "sdk", 256, 0.1, 0.97, "efficiency"),
        ("cheap", "sdk", 128, 0.0, 0.9, "requests/s"),
        ("emulator", "sdk", 256, 0.1, 0.95, "efficiency"),
    ):
        row = _row(rows, server, client, c, latency)
        if row is not None:
            where = f"c{c}/{int(latency * 1000)} ms, {server} server"
            check(
                f"{what} at {where}, {client} / plain aiohttp (asyncio.Semaphore + TaskGroup)",
                row.vs_aiohttp,
                goal,
            )
    by_command = {r.command: r for r in results.startup}
    for command, goal in (("import nanobanana_async", 120.0), ("nanobanana --help", 250.0)):
        found = by_command.get(command)
        if found is not None:
            ratio = f" ({found.vs_httpx:.2f}x `import httpx`)"
            verdict = "met" if found.wall_ms < goal else "NOT met"
            out.append(
                f"- `{command}`: {found.wall_ms:.0f} ms{ratio} (target < {goal:.0f} ms) - "
                + verdict
            )
    for m in results.modules:
        if m.command == "import nanobanana_async":
            optional = [p for p in m.loaded if p in startup.OPTIONAL]
            out.append(
                "- optional packages after `import nanobanana_async`: "
                f"{', '.join(optional) or 'none'} (target none) - "
                + ("NOT met" if optional else "met")
            )
    for cpu in results.cpu:
        if cpu.transport.startswith("canned") and cpu.client == "SDK run_batch (asyncio)":
            goal = 0.6 * OLD_CANNED_SDK_US
            check("per-job CPU in-process (canned answer), SDK", cpu.us_per_job, goal, below=True)
            old = OLD_CANNED_SDK_US / OLD_CANNED_HTTPX_US
            check(
                "the same against raw httpx in this run (was "
                f"{old:.2f}x; 0.6 of that is the target)",
                cpu.vs_httpx,
                0.6 * old,
                below=True,
                unit="x",
            )
    memory = results.memory
    if memory is not None and memory.get("jobs"):
        peak = memory["rss_peak"]
        verdict = "met" if peak < 150 else "NOT met"
        out.append(
            f"- peak RSS of the {int(memory['jobs']):,}-job batch: {peak:.1f} MiB (< 150) - "
            + verdict
        )
    return out


def store_cases(quick: bool, repeat: int, skip_memory: bool) -> str:
    """The job store benchmarks, as the markdown section of docs/benchmarks.md."""
    print("job stores: jobs/s in-process (canned answer):", flush=True)
    canned = stores.in_process(quick, repeat)
    print("job stores: jobs/s at c128/100 ms:", flush=True)
    with emulator_process(0.1) as url:
        rows = stores.throughput(url, quick, repeat)
        print("job stores: Postgres workers:", flush=True)
        workers = stores.postgres_workers(url, quick, repeat)
    mem = None
    if not skip_memory:
        print("job stores: memory:", flush=True)
        mem = stores.memory(quick)
    return stores.render(rows, mem, canned, workers)


def _write(output: pathlib.Path | None, text: str) -> None:
    if output is not None:
        output.write_text(text)
        print(f"written to {output}")


def _write_section(
    output: pathlib.Path | None, existing: str, section: str, *, before: str | None = None
) -> None:
    """Prints a section measured on its own and rewrites only that section of ``output``."""
    print()
    print(section)
    _write(output, replace_section(existing or "# Benchmarks\n", section, before=before))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer cases and requests")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (3; quick 1)")
    parser.add_argument(
        "--output",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="markdown file to write ('-': print only)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1M-job RSS cases")
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="only the telemetry overhead (per-job CPU, tracing/metrics/hooks on vs off)",
    )
    parser.add_argument(
        "--stores", action="store_true", help="only the job store cases (their section)"
    )
    parser.add_argument(
        "--skip-stores", action="store_true", help="skip the job store cases (keep their section)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated parts to run and print, without writing ({', '.join(PARTS)})",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="servers of the network cases (emulator,cheap)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="only RedisLimits against local limits (starts redis-server); rewrites that section",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="only Ray Data against run_batch (starts Ray and Postgres); rewrites that section",
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    output = pathlib.Path(args.output) if args.output != "-" else None
    existing = output.read_text() if output is not None and output.exists() else ""
    if args.telemetry:
        print("telemetry overhead, per-job CPU:", flush=True)
        section = render_telemetry(
            telemetry_cases(args.quick, repeat, lambda: emulator_process(0.0)), args.quick
        )
        _write_section(output, existing, section, before=TARGETS)
        return
    if args.stores:
        _write_section(output, existing, store_cases(args.quick, repeat, args.skip_memory))
        return
    if args.limits:
        print("shared limits:", flush=True)
        section = shared_limits.render(shared_limits.run(args.quick, repeat), args.quick, repeat)
        _write_section(output, existing, section)
        return
    if args.ray:
        print("Ray Data against run_batch:", flush=True)
        section = ray_pipeline.render(ray_pipeline.run(args.quick, repeat), args.quick, repeat)
        _write_section(output, existing, section)
        return
    parts = set(PARTS)
    if args.only is not None:
        parts = {p.strip() for p in args.only.split(",") if p.strip()}
        unknown = parts - set(PARTS)
        if unknown:
            parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
        output, existing = None, ""
    if args.skip_memory:
        parts.discard("memory")
    if args.skip_stores:
        parts.discard("stores")
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    results = Results(load_before=_load())
    if "network" in parts:
        print("throughput over loopback:", flush=True)
        results.rows = network_cases(servers, args.quick, repeat)
    if "cpu" in parts:
        print("per-job CPU in-process:", flush=True)
        results.cpu = cpu_cases(args.quick, repeat)
    if "startup" in parts:
        print("start-up:", flush=True)
        results.startup = startup.startup_cases(args.quick)
        results.modules = startup.loaded_modules()
    if "profile" in parts:
        print("where the time goes:", flush=True)
        results.profile = profile_cases(args.quick)
    if "memory" in parts:
        print("memory:", flush=True)
        results.memory = memory_case(args.quick)
    results.load_after = _load()
    text = render(results, args.quick, repeat)
    if "stores" in parts:
        text = replace_section(text, store_cases(args.quick, repeat, "memory" not in parts))
    # Sections measured by their own options (and the job stores when skipped): carried over.
    kept = [
        TELEMETRY,
        shared_limits.SECTION,
        ray_pipeline.SECTION,
        *([] if "stores" in parts else [stores.SECTION]),
    ]
    for heading in kept:
        found = section_of(existing, heading)
        if found is not None:
            text = replace_section(text, found, before=TARGETS if heading == TELEMETRY else None)
    print()
    print(text)
    _write(output, text)


if __name__ == "__main__":
    main()
