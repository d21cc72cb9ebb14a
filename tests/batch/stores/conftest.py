"""Real job stores for the tests: a SQLite file, and a fresh database on the Postgres server
that ``tests/conftest.py`` starts (never SQLite standing in for Postgres)."""

from __future__ import annotations

import pathlib

import pytest

from tests.support.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """The URL of an empty store of each kind (``journal=`` takes it as is)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("pg_url"))
