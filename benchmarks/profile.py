"""Where a job's client CPU goes: ``run_batch`` under cProfile, own time grouped by package.

cProfile counts every Python call, so call-heavy code looks a little more expensive than it is
next to C code (socket calls, json, the event loop's selector); the shares are what to read,
and the calls per job, which do not move with the machine's load.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import httpx

from . import clients

__all__ = ["ProfileRow", "group", "profile_case"]

# (substring of the code's file name, group); the first match wins.
_GROUPS: tuple[tuple[str, str], ...] = (
    ("nanobanana_async/client.py", "SDK: client (generate, post, answer)"),
    ("nanobanana_async/_http/", "SDK: transports (_http)"),
    ("nanobanana_async/batch/", "SDK: batch runner"),
    ("nanobanana_async/retry.py", "SDK: retry"),
    ("nanobanana_async/telemetry/", "SDK: telemetry"),
    ("nanobanana_async/limits/", "SDK: limits"),
    ("nanobanana_async/", "SDK: models, pricing, errors"),
    ("<attrs generated", "attrs-generated methods (SDK types)"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpcore"),
    ("/h11/", "h11"),
    ("/aiohttp/", "aiohttp, yarl, multidict"),
    ("/yarl/", "aiohttp, yarl, multidict"),
    ("/multidict/", "aiohttp, yarl, multidict"),
    ("/propcache/", "aiohttp, yarl, multidict"),
    ("/anyio/", "anyio"),
    ("/sniffio/", "anyio"),
    ("/trio/", "trio (scheduler, sockets)"),
    ("/outcome/", "trio (scheduler, sockets)"),
    ("/asyncio/", "asyncio (event loop)"),
    ("selectors.py", "asyncio (event loop)"),
    ("/socket.py", "socket calls"),
    ("/json/", "json"),
    ("benchmarks/", "benchmark harness (jobs, canned answer)"),
)


def group(filename: str, function: str) -> str:
    """The group a profiled function belongs to."""
    if filename == "~":  # a built-in: by what it is
        if "socket" in function or "'send'" in function or "recv" in function:
            return "socket calls"
        if "poll" in function or "select" in function:
            return "waiting for sockets (poll)"
        if "json" in function:
            return "json"
        return "built-ins (isinstance, str and bytes methods, ...)"
    for needle, name in _GROUPS:
        if needle in filename:
            return name
    return "stdlib (contextlib, uuid, weakref, ...)"


@attrs.frozen
class ProfileRow:
    case: str
    group: str
    share: float
    calls_per_job: float


def _profile(run: Callable[[], Any], n: int, case: str) -> list[ProfileRow]:
    profile = cProfile.Profile()
    profile.enable()
    try:
        run()
    finally:
        profile.disable()
    stats: Any = pstats.Stats(profile)
    own: dict[str, float] = {}
    calls: dict[str, int] = {}
    for (filename, _line, function), entry in stats.stats.items():
        name = group(filename, function)
        own[name] = own.get(name, 0.0) + entry[2]
        calls[name] = calls.get(name, 0) + entry[1]
    total = sum(own.values()) or 1.0
    rows = [
        ProfileRow(case, name, seconds / total, calls[name] / n)
        for name, seconds in sorted(own.items(), key=lambda kv: -kv[1])
    ]
    return rows


Client = Callable[[str, str, int, int], Awaitable[clients.Outcome]]


def profile_case(
    case: str,
    base_url: str,
    n: int,
    concurrency: int,
    backend: str,
    in_process: bool = False,
    client: Client | None = None,
) -> list[ProfileRow]:
    """Profile one ``run_batch`` of ``n`` jobs (after a warm-up run), or ``client`` (a
    hand-written baseline, or the SDK on another transport)."""

    def transport() -> httpx.AsyncBaseTransport | None:
        if not in_process:
            return None
        from .memory import trivial_transport

        return trivial_transport()

    def run(count: int) -> Any:
        if client is not None:
            return anyio.run(client, base_url, key, count, concurrency, backend=backend)
        return anyio.run(
            clients.sdk, base_url, key, count, concurrency, transport(), backend=backend
        )

    key = "nb-bench-profile-0123456789"
    run(n // 4)
    rows = _profile(lambda: run(n), n, case)
    top = ", ".join(f"{r.group} {r.share:.0%}" for r in rows[:4])
    print(f"  {case}: {top}", flush=True)
    return rows
