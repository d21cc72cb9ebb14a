"""Start-up: import time of the package and of ``nanobanana --help``, in fresh interpreters.

Every command runs in a new interpreter, commands interleaved round after round; the figure is
the median wall time, and the ratio to ``import httpx`` is the median of the per-round ratios
(a busy machine slows a round's commands alike). Byte-code is written once before timing (as
an installed package has it), whatever ``PYTHONDONTWRITEBYTECODE`` says.

Then, once per command, which optional packages the interpreter holds afterwards, and what
brought them in: httpx imports ``click``, ``rich`` and ``pygments`` itself (``httpx._main``,
its command line) whenever all three are installed, and httpcore imports ``trio`` when it is
installed, so those are reported as httpx's or httpcore's, not the SDK's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import attrs

__all__ = ["OPTIONAL", "ModulesRow", "StartupRow", "loaded_modules", "startup_cases"]

#: Optional packages the SDK must not import before they are used.
OPTIONAL = ("aiohttp", "rich", "uvicorn", "psycopg", "opentelemetry")
#: Also reported: what the SDK imports on the way to a request, and what httpx/httpcore bring.
WATCHED = (
    *OPTIONAL,
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "trio",
    "tenacity",
    "click",
    "pygments",
    "asyncio",
    "ssl",
)

_HELP = (
    "import sys\nsys.argv = ['nanobanana', '--help']\nfrom nanobanana_async.cli import main\n"
    "try:\n    sys.exit(main())\nexcept SystemExit:\n    pass\n"
)

COMMANDS: dict[str, str] = {
    "python -c pass": "pass",
    "import httpx": "import httpx",
    "import nanobanana_async": "import nanobanana_async",
    "from nanobanana_async import AsyncNanoBanana": "from nanobanana_async import AsyncNanoBanana",
    "nanobanana --help": _HELP,
}
REFERENCE = "import httpx"


@attrs.frozen
class StartupRow:
    command: str
    wall_ms: float
    cpu_ms: float
    vs_httpx: float  # median of per-round ratios to ``import httpx``


@attrs.frozen
class ModulesRow:
    command: str
    loaded: tuple[str, ...]
    via_httpx: tuple[str, ...]  # loaded because httpx (its CLI) or httpcore imported them


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _argv(name: str, code: str) -> list[str]:
    if name == "nanobanana --help":
        script = shutil.which("nanobanana", path=os.path.dirname(sys.executable))
        if script is not None:
            return [script, "--help"]
    return [sys.executable, "-c", code]


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return wall * 1e3, (usage.ru_utime + usage.ru_stime) * 1e3


def startup_cases(quick: bool) -> list[StartupRow]:
    rounds = 5 if quick else 15
    env = _env()
    for name, code in COMMANDS.items():  # byte-code written, caches warm
        _timed(_argv(name, code), env)
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
    ratios: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        this_round: dict[str, float] = {}
        for name, code in COMMANDS.items():
            wall, cpu = _timed(_argv(name, code), env)
            walls[name].append(wall)
            cpus[name].append(cpu)
            this_round[name] = wall
        for name, wall in this_round.items():
            ratios[name].append(wall / this_round[REFERENCE])
    rows = [
        StartupRow(
            name,
            statistics.median(walls[name]),
            statistics.median(cpus[name]),
            statistics.median(ratios[name]),
        )
        for name in COMMANDS
    ]
    for row in rows:
        print(
            f"  {row.command:46} {row.wall_ms:6.0f} ms wall {row.cpu_ms:6.0f} ms CPU "
            f"{row.vs_httpx:5.2f}x import httpx",
            flush=True,
        )
    return rows


def loaded_modules() -> list[ModulesRow]:
    """Which watched packages each command leaves in ``sys.modules`` (one fresh run each)."""
    report = (
        "\nimport json, sys\n"
        f"watched = {WATCHED!r}\n"
        "loaded = [m for m in watched if m in sys.modules]\n"
        "print(json.dumps({'loaded': loaded, 'httpx_cli': 'httpx._main' in sys.modules,"
        " 'httpcore': 'httpcore' in sys.modules}), file=sys.stderr)\n"
    )
    rows = []
    for name, code in COMMANDS.items():
        if name == "python -c pass":
            continue
        proc = subprocess.run(
            [sys.executable, "-c", code + report],
            env=_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        found = json.loads(proc.stderr.strip().splitlines()[-1])
        via: list[str] = []
        if found["httpx_cli"]:
            via += [m for m in ("click", "rich", "pygments") if m in found["loaded"]]
        if found["httpcore"] and "trio" in found["loaded"]:
            via.append("trio")
        rows.append(ModulesRow(name, tuple(found["loaded"]), tuple(via)))
        print(f"  {name:46} loaded {', '.join(found['loaded']) or '-'}", flush=True)
    return rows
