"""Real job stores for the tests: a SQLite file, and a Postgres server started here.

Postgres comes from Debian's ``postgresql`` package (``.ci/run`` installs it when missing);
without its binaries the Postgres tests are skipped, saying so. Never SQLite standing in for
Postgres: each test gets a fresh database on a real server.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest

from tests.support.postgres import PgCluster, pg_bin


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    binaries = pg_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    cluster = PgCluster.start(binaries)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A new, empty database on the test server for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """The URL of an empty store of each kind (``journal=`` takes it as is)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("pg_url"))
