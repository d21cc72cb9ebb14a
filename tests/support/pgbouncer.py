"""pgbouncer in front of a test PostgreSQL cluster: Debian's binary, a free loopback port.

``PgBouncer.start(cluster, mode="transaction")`` runs pgbouncer (as the ``postgres`` user when
the tests run as root: pgbouncer refuses root) with every database of ``cluster`` behind it,
trust authentication and a small server pool (``pool_size``), so that clients really share
server connections, as they do in production. ``PGBOUNCER`` overrides the binary's path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from tests.support.postgres import PgCluster, as_pg, base_dir, die_with_parent, free_port

__all__ = ["PgBouncer", "pgbouncer_bin"]


def pgbouncer_bin() -> Path | None:
    """Debian's pgbouncer, or None when it is not installed."""
    found = os.environ.get("PGBOUNCER") or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return Path(found) if Path(found).exists() else None


class PgBouncer:
    """A running pgbouncer: :meth:`url` of a database behind it."""

    def __init__(self, base: Path, port: int, proc: subprocess.Popen[bytes], mode: str) -> None:
        self.base, self.port, self.proc, self.mode = base, port, proc, mode

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def start(
        cls, cluster: PgCluster, *, mode: str = "transaction", pool_size: int = 3
    ) -> PgBouncer:
        binary = pgbouncer_bin()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        base = base_dir()
        try:
            for _attempt in range(5):  # the free port may be taken between probe and bind
                port = free_port()
                config = base / "pgbouncer.ini"
                users = base / "users.txt"
                log = base / "pgbouncer.log"
                users.write_text('"postgres" ""\n')
                config.write_text(
                    "[databases]\n"
                    f"* = host=127.0.0.1 port={cluster.port}\n"
                    "[pgbouncer]\n"
                    "listen_addr = 127.0.0.1\n"
                    f"listen_port = {port}\n"
                    "unix_socket_dir =\n"
                    "auth_type = trust\n"
                    f"auth_file = {users}\n"
                    f"pool_mode = {mode}\n"
                    f"default_pool_size = {pool_size}\n"
                    "max_client_conn = 500\n"
                    "server_reset_query = DISCARD ALL\n"
                    # After a failed server login (a restarting Postgres) pgbouncer waits this
                    # long before trying again: 15 s by default, 3 s keeps the tests short.
                    "server_login_retry = 3\n"
                    f"logfile = {log}\n"
                    f"pidfile = {base / 'pgbouncer.pid'}\n"
                )
                proc = subprocess.Popen(
                    as_pg([str(binary), str(config)]),
                    cwd=base,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=die_with_parent,
                )
                bouncer = cls(base, port, proc, mode)
                if bouncer._wait_ready():
                    return bouncer
                bouncer.stop(remove=False)
                text = log.read_text(errors="replace") if log.exists() else ""
                if "Address already in use" not in text:
                    raise RuntimeError(  # noqa: TRY301 - cleaned up below like any failure
                        f"pgbouncer did not start:\n{text[-3000:]}"
                    )
            raise RuntimeError("pgbouncer found no free port")  # noqa: TRY301
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.02)
        return False

    def stop(self, *, remove: bool = True) -> None:
        if self.proc.poll() is None:
            # pgbouncer runs under runuser: signal pgbouncer itself (its pid file).
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.base / "pgbouncer.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)
