"""Store options, from keywords or the store URL's query string; unknown ones are refused."""

from __future__ import annotations

import pathlib
import urllib.parse

import pytest

from nanobanana_async import InvalidRequestError, PostgresStore, SqliteStore, open_store
from nanobanana_async.batch.stores import SqlStore


def _sql(url: str) -> SqlStore:
    store = open_store(url)
    assert isinstance(store, SqlStore)
    return store


def test_sqlite_options_from_the_url(tmp_path: pathlib.Path) -> None:
    store = _sql(
        "sqlite:///data/run.db?queue=nightly&lease=5&retry_window=3&statement_timeout=0"
        f"&spool_dir={tmp_path}"
    )
    assert isinstance(store, SqliteStore)
    assert store.path == "data/run.db"
    assert (store.queue, store.lease, store.retry_window) == ("nightly", 5.0, 3.0)
    assert store.statement_timeout is None  # 0: no limit
    assert store.spool.path.parent == tmp_path
    assert store.url == "sqlite:///data/run.db"


def test_defaults() -> None:
    store = SqliteStore("run.db")
    assert (store.queue, store.lease, store.retry_window, store.statement_timeout) == (
        "default",
        60.0,
        20.0,
        30.0,
    )


def test_postgres_passes_libpq_parameters_on_and_reads_its_own() -> None:
    store = PostgresStore(
        "postgresql://bob:s3cret@db:5432/jobs?sslmode=disable&connect_timeout=3"
        "&keepalives_idle=5&queue=q1&writers=2&retry_window=45"
    )
    assert (store.queue, store.writers, store.retry_window) == ("q1", 2, 45.0)
    assert (
        store.url
        == "postgresql://bob:***@db:5432/jobs?sslmode=disable&connect_timeout=3&keepalives_idle=5"
    )
    conninfo = dict(part.split("=", 1) for part in store._conninfo.split())
    # What the URL says wins; what it leaves out gets the store's defaults.
    assert conninfo["connect_timeout"] == "3"
    assert conninfo["keepalives_idle"] == "5"
    assert (conninfo["keepalives"], conninfo["keepalives_interval"]) == ("1", "10")
    plain = dict(
        part.split("=", 1) for part in PostgresStore("postgresql://db/x")._conninfo.split()
    )
    assert plain["connect_timeout"] == "10"


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("sqlite:///run.db?retry_windw=3", "retry_window"),
        ("sqlite:///run.db?max_credits=3", None),
        ("postgresql://bob:s3cret@db/jobs?queeu=a", "queue"),
        ("postgresql://bob:s3cret@db/jobs?sslmod=require", "sslmode"),
    ],
)
def test_an_unknown_option_is_refused_naming_the_known_ones(url: str, hint: str | None) -> None:
    with pytest.raises(InvalidRequestError, match="unknown option") as info:
        open_store(url)
    message = str(info.value)
    assert "s3cret" not in message
    assert "retry_window" in message  # the known options are listed
    if hint is not None:
        assert f"did you mean {hint!r}" in message


@pytest.mark.parametrize(
    "query",
    [
        "lease=0",
        "lease=abc",
        "retry_window=-1",
        "statement_timeout=inf",
        "queue=",
        f"queue={urllib.parse.quote('a b')}",
        f"queue={urllib.parse.quote(chr(39) + '; DROP TABLE t; --')}",
        "queue=" + "q" * 65,
        "writers=0",
        "queue=a&queue=b",
    ],
)
def test_a_bad_option_value_is_refused(query: str) -> None:
    with pytest.raises(InvalidRequestError):
        open_store(f"postgresql://db/jobs?{query}")


def test_an_option_given_twice_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="both in the job store URL and as an argument"):
        PostgresStore("postgresql://db/jobs?queue=a", queue="b")
    with pytest.raises(InvalidRequestError, match="queue"):
        SqliteStore("run.db", queue="no spaces please")
    with pytest.raises(InvalidRequestError, match="lease"):
        SqliteStore("run.db", lease=-1)
