"""A throwaway PostgreSQL server for tests: Debian's binaries, a free loopback port, no fsync.

``PgCluster.start()`` runs ``initdb`` and ``postgres`` (as the ``postgres`` user through
``runuser`` when the tests run as root: initdb refuses root) in a fresh directory, listening
on 127.0.0.1 only. ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are off: a
test cluster is thrown away, never recovered. A cluster that tests crash on purpose starts
with ``crash_safe=True``: ``synchronous_commit`` on, so a commit the server acknowledged
survives a killed server as it does in production (``fsync`` stays off: the operating system
keeps what was written when only processes die). ``PG_BIN`` overrides where the binaries are
(default: the newest ``/usr/lib/postgresql/*/bin``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import psycopg
import pytest

__all__ = ["PgCluster", "as_pg", "base_dir", "die_with_parent", "free_port", "pg_bin"]

RUN_AS = "postgres"


def pg_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries, or None when not installed."""
    if "PG_BIN" in os.environ:
        path = Path(os.environ["PG_BIN"])
        return path if (path / "postgres").exists() else None
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _is_root() -> bool:
    return os.geteuid() == 0


def as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv] if _is_root() else argv


def die_with_parent() -> None:  # in the child, between fork and exec
    # A test process killed with SIGKILL must not leave a postmaster behind: runuser gets
    # SIGTERM and forwards it to postgres.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sweep_stale(parent: str, min_age: float = 600.0) -> None:
    """Remove pgtest-* directories a killed run left (no live postmaster, old enough)."""
    for d in Path(parent).glob("pgtest-*"):
        with contextlib.suppress(OSError, ValueError):
            if time.time() - d.stat().st_mtime < min_age:
                continue
            pidfile = d / "data" / "postmaster.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().split()[0]), 0)
                    continue  # still running: someone else's cluster
                except ProcessLookupError:
                    pass
            shutil.rmtree(d, ignore_errors=True)


def base_dir() -> Path:
    """A fresh directory the postgres user owns and can reach through every parent (pytest's
    temporary directories sit under 0700 parents it cannot traverse)."""
    candidates = [os.environ.get("PG_TEST_TMPDIR"), tempfile.gettempdir(), "/dev/shm", "/tmp"]
    tried = []
    for parent in dict.fromkeys(c for c in candidates if c):
        if not os.path.isdir(parent):
            continue
        _sweep_stale(parent)
        path = Path(tempfile.mkdtemp(prefix="pgtest-", dir=parent))
        if _is_root():
            pw = pwd.getpwnam(RUN_AS)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        check = as_pg(["test", "-w", str(path), "-a", "-x", str(path)])
        if subprocess.run(check, check=False).returncode == 0:
            return path
        tried.append(str(path))
        shutil.rmtree(path, ignore_errors=True)
    raise RuntimeError(f"no temporary directory the {RUN_AS!r} user can use; tried {tried}")


class PgCluster:
    """A running test cluster: :meth:`url` of a database, :meth:`create_database`."""

    def __init__(self, base: Path, port: int, binaries: Path, *, crash_safe: bool = False) -> None:
        self.base, self.port, self.binaries = base, port, binaries
        self.crash_safe = crash_safe
        self.datadir = base / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, timeout: float = 60.0) -> bool:
        """Start the postmaster on this cluster's port; False if it exited at once."""
        self.launch()
        if self._wait_ready(timeout):
            return True
        assert self.proc is not None
        self.proc.wait(timeout=10)
        return False

    def launch(self) -> None:
        """Start the postmaster without waiting for it. Call it from the thread that lives as
        long as the cluster (the test's main thread): the parent-death signal that stops a
        postmaster whose test process was killed fires when the *thread* that started it
        ends, and a worker thread ends when it has been idle for a while."""
        with open(self.base / "postgres.log", "ab") as logf:
            self.proc = subprocess.Popen(
                as_pg(
                    [
                        str(self.binaries / "postgres"),
                        "-D",
                        str(self.datadir),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.base / "sock"),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        f"synchronous_commit={'on' if self.crash_safe else 'off'}",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ]
                ),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._wait_ready(timeout):
            raise RuntimeError("postgres did not start again")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @classmethod
    def start(cls, binaries: Path, timeout: float = 60.0, *, crash_safe: bool = False) -> PgCluster:
        base = base_dir()
        datadir, sockdir, log = base / "data", base / "sock", base / "postgres.log"
        cluster = None
        try:
            subprocess.run(as_pg(["mkdir", "-m", "0700", str(sockdir)]), check=True)
            initdb = subprocess.run(
                as_pg(
                    [
                        str(binaries / "initdb"),
                        "-D",
                        str(datadir),
                        "-A",
                        "trust",
                        "-U",
                        "postgres",
                        "--no-sync",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-instructions",
                    ]
                ),
                cwd=base,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
            )
            if initdb.returncode != 0:
                raise RuntimeError(  # noqa: TRY301 - cleaned up below like any failure
                    f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}"
                )
            for _attempt in range(5):  # the free port may be taken between probe and bind
                cluster = cls(base, free_port(), binaries, crash_safe=crash_safe)
                if cluster._spawn(timeout):
                    return cluster
                if "could not bind" not in log.read_text(errors="replace"):
                    break
            output = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"postgres did not start:\n{output}")  # noqa: TRY301
        except BaseException:
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
            raise

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.02)
        raise TimeoutError(f"postgres not accepting connections after {timeout}s")

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        return None

    # -- faults ---------------------------------------------------------------------------

    def backends(self) -> list[int]:
        """The PIDs of the postmaster's children (backends and auxiliary processes)."""
        parent = self._postmaster_pid()
        return _children(parent) if parent is not None else []

    def shutdown(self, mode: str = "fast") -> None:
        """Stop the server as ``pg_ctl stop -m fast`` (clients disconnected) or ``-m
        immediate`` does, and wait until its processes are gone."""
        pid = self._postmaster_pid()
        if self.proc is None or self.proc.poll() is not None or pid is None:
            return
        children = self.backends()
        signo = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        os.kill(pid, signo[mode])
        self.proc.wait(timeout=60)
        _wait_gone(children)

    async def restart(self, *, downtime: float = 0.0, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE`` with ``downtime`` seconds between stop and start (the
        waits in worker threads, the start in the calling thread: see :meth:`launch`)."""
        await anyio.to_thread.run_sync(self.shutdown, mode)
        await anyio.sleep(downtime)
        self.launch()
        await anyio.to_thread.run_sync(self.wait_ready)

    async def crash(self, *, downtime: float = 0.0) -> None:
        """SIGKILL the postmaster (its backends notice and exit), then start it again: crash
        recovery, as after an OOM kill."""
        pid = self._postmaster_pid()
        assert pid is not None
        assert self.proc is not None
        children = self.backends()
        os.kill(pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(self.proc.wait)
        await anyio.to_thread.run_sync(_wait_gone, children)
        await anyio.sleep(downtime)
        self.launch()
        await anyio.to_thread.run_sync(self.wait_ready)

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: the server stops answering while its
        sockets stay open (what a client sees of a network partition)."""
        pid = self._postmaster_pid()
        assert pid is not None
        for target in [pid, *self.backends()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGSTOP)

    def resume(self) -> None:
        pid = self._postmaster_pid()
        assert pid is not None
        # runuser stops itself when its child stops (job control, like su): it continues too.
        parent = [self.proc.pid] if self.proc is not None else []
        for target in [*parent, pid, *self.backends()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT to the postmaster is a fast shutdown (clients disconnected); SIGTERM to
            # runuser would become a smart one, waiting for every client.
            pid = self._postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGCONT)  # a paused server must hear it
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGINT)
                for child in _children(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGCONT)
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.01)


def started_cluster(*, crash_safe: bool = False) -> Iterator[PgCluster]:
    """A fixture's body: Debian's PostgreSQL on a free loopback port, stopped afterwards
    (skipped, saying so, where its binaries are not installed: ``.ci/run`` installs them)."""
    binaries = pg_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    cluster = PgCluster.start(binaries, crash_safe=crash_safe)
    try:
        yield cluster
    finally:
        cluster.stop()
