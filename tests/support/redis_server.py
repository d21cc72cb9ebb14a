"""A real Debian ``redis-server`` on a free loopback port, for the limits tests and docs.

The session's server keeps its data in an append-only file in a temporary directory, as
production Redis behind shared limits should (see docs/scaling.md): a crash and restart keeps
the ledger. ``stop()`` kills it (SIGKILL: open sockets get a reset at once), ``start()``
brings it back on the same port, ``wipe()`` forgets everything (a restart without
persistence), ``hang()`` / ``resume()`` stop and continue it (it accepts connections but never
answers). ``redis_factory`` starts servers configured otherwise (no persistence, ``maxmemory``
and an eviction policy, a password), stopped at the end of the test. Skipped, saying so, where
``redis-server`` is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_factory", "redis_server", "redis_url"]


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)),
        None,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int, timeout: float = 0.2) -> bool:
    # Raw RESP: the fixture needs no client library. Up: +PONG, or -NOAUTH from a server
    # with a password (not -LOADING: still reading its append-only file).
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process; stop and start it again on the same port."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        appendonly: bool = True,
        password: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.appendonly = appendonly
        self.password = password
        self.options = list(options)

    @property
    def url(self) -> str:
        """The server's URL (with its password, percent-encoded as URLs require)."""
        login = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def cli(self, *command: str) -> str:
        """``redis-cli`` on the server: the reply as text (read without the SDK)."""
        argv = ["redis-cli", "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            argv += ["-a", self.password]
        done = subprocess.run(
            [*argv, *command], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def namespace(self) -> str:
        """A namespace no other test uses."""
        return f"t-{uuid.uuid4().hex[:12]}"

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "redis.log"),
            "--daemonize", "no",
            *(["--requirepass", self.password] if self.password else []),
            *self.options,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s")

    def stop(self) -> None:
        """Kill the server (a crash); the append-only file keeps what it acknowledged."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case it was hung
            proc.kill()
            proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _ping(self.port, 0.05):
            time.sleep(0.02)

    def wipe(self) -> None:
        """Stop the server and forget its data: a restart without persistence."""
        self.stop()
        for path in self.workdir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.name != "redis.log":
                path.unlink()

    def hang(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis; tests that stop it get it running again afterwards."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory(prefix="nanobanana-redis-") as tmp:
        server = RedisServer(binary, Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a server configured otherwise than the session's (``RedisServer``'s keyword
    arguments); each is stopped at the end of the test."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    servers: list[RedisServer] = []

    def make(**options: object) -> RedisServer:
        workdir = tmp_path / f"redis-{len(servers)}"
        workdir.mkdir()
        server = RedisServer(binary, workdir, **options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of a running Redis (restarted after a test that stopped or hung it)."""
    yield redis_server.url
    if redis_server.proc is not None and redis_server.running:
        redis_server.resume()
    redis_server.start()
