"""Shared fixtures: every async test runs on both anyio backends (asyncio and Trio), and a real
PostgreSQL server for the tests that need one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.postgres import PgCluster, started_cluster

# One definition for the whole suite, so Ray starts once per session (the Ray tests and the
# docs' ```python ray blocks share it).
from tests.support.ray_cluster import ray_session  # noqa: F401 (a fixture)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Job stores' spools (``$XDG_STATE_HOME/nanobanana/spool``) go to a directory of the test's
    own, never into the home of whoever runs the tests (subprocesses inherit it)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Debian's PostgreSQL on a free loopback port for the whole session (``.ci/run``
    installs it when missing; without its binaries the tests that need it are skipped)."""
    yield from started_cluster()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A new, empty database on the test server for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)
