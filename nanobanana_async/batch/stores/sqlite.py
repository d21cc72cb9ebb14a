"""The embedded job store: one SQLite file (stdlib ``sqlite3``, WAL), flat memory at millions.

``journal="sqlite:///run.db"`` (a path relative to the working directory;
``sqlite:////abs/run.db`` for an absolute one; options in the query string:
``sqlite:///run.db?queue=nightly``). Several processes on one machine may share the file:
SQLite lets one write at a time, and every write here is short.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import InvalidRequestError
from .group import Op
from .options import SQL_OPTIONS, resolve
from .sql import Dialect
from .sqlstore import SqlStore

__all__ = ["SqliteStore"]

_DIALECT = Dialect(
    name="sqlite",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    real="REAL",
    lock="",
    table_exists="SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = :name",
    table_suffix=" WITHOUT ROWID",
    named_params=True,
)
# Result codes (the low byte of the extended ones) that mean "not now" rather than "never":
# busy or locked by another process, interrupted by the statement timeout, an I/O error or a
# full disk, which may pass.
_TRANSIENT = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PROTOCOL,
    }
)


class SqliteStore(SqlStore):
    """A job store in the SQLite file ``path`` (created if missing).

    Writes use WAL with ``synchronous=NORMAL``: a killed process loses nothing that was
    committed; a power cut may lose the last moments. Options (``lease``, ``queue``,
    ``retry_window``, ``statement_timeout``, ``spool_dir``, ``wait_for_lease``): see
    :class:`SqlStore`.
    """

    dialect = _DIALECT
    writers = 1  # SQLite has one writer at a time: one connection does every write

    @property
    def connections(self) -> int:
        """One: a second connection would re-read the pages the first one just wrote."""
        return 1

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease: float | None = None,
        queue: str | None = None,
        retry_window: float | None = None,
        statement_timeout: float | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        wait_for_lease: bool | None = None,
    ) -> None:
        given = {
            "lease": lease,
            "queue": queue,
            "retry_window": retry_window,
            "statement_timeout": statement_timeout,
            "spool_dir": spool_dir,
            "wait_for_lease": wait_for_lease,
        }
        self._configure(resolve(None, given, options=SQL_OPTIONS)[1])
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:":
            raise InvalidRequestError(
                "a SQLite job store needs a file path (sqlite:///run.db), not memory",
                param="journal",
            )

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """``sqlite:///relative/path`` or ``sqlite:////absolute/path``, options after ``?``."""
        path = url.partition("?")[0].removeprefix("sqlite://")
        if not path.startswith("/") or len(path) < 2:
            raise InvalidRequestError(
                f"a SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path, "
                f"got {url!r}",
                param="journal",
            )
        return cls(path[1:], **resolve(url, {}, options=SQL_OPTIONS)[1])

    @property
    def url(self) -> str:
        """``sqlite:///`` and the path."""
        return f"sqlite:///{self.path}"

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _transient(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in _TRANSIENT

    def _interrupt(self, conn: sqlite3.Connection) -> None:
        conn.interrupt()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def _atomic(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _execute(self, conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> Any:
        return conn.execute(sql, params)

    def _transaction(self, conn: sqlite3.Connection, ops: list[Op]) -> None:
        with self._atomic(conn):
            for op in ops:
                _run(conn, op)
        for op in ops:
            op.done = True

    def _claim(self, conn: sqlite3.Connection, params: dict[str, Any]) -> list[Sequence[Any]]:
        with self._atomic(conn):
            return conn.execute(self.statements.claim, params).fetchall()


def _run(conn: sqlite3.Connection, op: Op) -> None:
    total = 0
    cursor = None
    for sql, params in op.statements:
        cursor = conn.execute(sql, params)
        total += max(cursor.rowcount, 0)
    if op.want == "row":
        op.result = cursor.fetchone() if cursor is not None else None
    elif op.want == "rowcount":
        op.result = cursor.rowcount if cursor is not None else 0
    elif op.want == "total":
        op.result = total
