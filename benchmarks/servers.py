"""The servers the clients are measured against, each in its own process.

``emulator``: the package's emulator under uvicorn (what users test against, and what most of
a request's server-side CPU costs); ``cheap``: :mod:`benchmarks.cheap_server`, an asyncio
Protocol answering a fixed success, so that the client, not the server, is what is measured.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import attrs

__all__ = ["SERVERS", "Server", "emulator_process", "server_process"]

#: Server kinds, as the tables name them.
SERVERS = ("emulator", "cheap")


@attrs.frozen
class Server:
    """A running server: its base URL and process id."""

    url: str
    pid: int

    def cpu(self) -> float:
        """CPU seconds (user + system) the server process has used so far (Linux /proc)."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _command(kind: str, latency: float) -> list[str]:
    if kind == "emulator":
        return [
            sys.executable,
            "-m",
            "nanobanana_async.emulator",
            "--port",
            "0",
            "--latency",
            str(latency),
            "--credits",
            "100000000",
        ]
    if kind == "cheap":
        return [sys.executable, "-m", "benchmarks.cheap_server", "--latency", str(latency)]
    raise ValueError(f"unknown server {kind!r}")


@contextlib.contextmanager
def server_process(kind: str, latency: float) -> Iterator[Server]:
    """Start a server of ``kind`` answering after ``latency`` seconds; stop it on exit."""
    proc = subprocess.Popen(
        _command(kind, latency),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http"):
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        yield Server(line, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def emulator_process(latency: float) -> Iterator[str]:
    """The emulator under uvicorn in a child process; yields its base URL."""
    with server_process("emulator", latency) as server:
        yield server.url
