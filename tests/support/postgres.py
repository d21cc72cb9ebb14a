"""A throwaway PostgreSQL server for tests: Debian's binaries, a free loopback port, no fsync.

``PgCluster.start()`` runs ``initdb`` and ``postgres`` (as the ``postgres`` user through
``runuser`` when the tests run as root: initdb refuses root) in a fresh directory, listening
on 127.0.0.1 only. ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are off: a
test cluster is thrown away, never recovered. ``PG_BIN`` overrides where the binaries are
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
from pathlib import Path

import psycopg

__all__ = ["PgCluster", "pg_bin"]

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


def _as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv] if _is_root() else argv


def _die_with_parent() -> None:  # in the child, between fork and exec
    # A test process killed with SIGKILL must not leave a postmaster behind: runuser gets
    # SIGTERM and forwards it to postgres.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
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


def _base_dir() -> Path:
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
        check = _as_pg(["test", "-w", str(path), "-a", "-x", str(path)])
        if subprocess.run(check, check=False).returncode == 0:
            return path
        tried.append(str(path))
        shutil.rmtree(path, ignore_errors=True)
    raise RuntimeError(f"no temporary directory the {RUN_AS!r} user can use; tried {tried}")


class PgCluster:
    """A running test cluster: :meth:`url` of a database, :meth:`create_database`."""

    def __init__(self, base: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.base, self.port, self.proc = base, port, proc
        self.datadir = base / "data"

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
    def start(cls, binaries: Path, timeout: float = 60.0) -> PgCluster:
        base = _base_dir()
        datadir, sockdir, log = base / "data", base / "sock", base / "postgres.log"
        cluster = None
        try:
            subprocess.run(_as_pg(["mkdir", "-m", "0700", str(sockdir)]), check=True)
            initdb = subprocess.run(
                _as_pg(
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
                port = _free_port()
                with open(log, "ab") as logf:
                    proc = subprocess.Popen(
                        _as_pg(
                            [
                                str(binaries / "postgres"),
                                "-D",
                                str(datadir),
                                "-p",
                                str(port),
                                "-k",
                                str(sockdir),
                                "-c",
                                "listen_addresses=127.0.0.1",
                                "-c",
                                "fsync=off",
                                "-c",
                                "synchronous_commit=off",
                                "-c",
                                "full_page_writes=off",
                                "-c",
                                "max_connections=200",
                            ]
                        ),
                        cwd=base,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
                    )
                cluster = cls(base, port, proc)
                if cluster._wait_ready(timeout):
                    return cluster
                proc.wait(timeout=10)
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
            if self.proc.poll() is not None:
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGINT to the postmaster is a fast shutdown (clients disconnected); SIGTERM to
            # runuser would become a smart one, waiting for every client.
            pid = self._postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
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
