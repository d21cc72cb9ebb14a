"""The embedded job store: one SQLite file (stdlib ``sqlite3``, WAL), flat memory at millions.

``journal="sqlite:///run.db"`` (a path relative to the working directory;
``sqlite:////abs/run.db`` for an absolute one). Several processes on one machine may share
the file: SQLite lets one write at a time, and every write here is short.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from ...errors import InvalidRequestError
from .group import Op
from .sql import Dialect
from .sqlstore import DEFAULT_LEASE, SqlStore

__all__ = ["SqliteStore"]

_DIALECT = Dialect(
    name="sqlite",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    real="REAL",
    lock="",
    table_suffix=" WITHOUT ROWID",
    named_params=True,
)


class SqliteStore(SqlStore):
    """A job store in the SQLite file ``path`` (created if missing).

    Writes use WAL with ``synchronous=NORMAL``: a killed process loses nothing that was
    committed; a power cut may lose the last moments.
    """

    dialect = _DIALECT
    writers = 1  # SQLite has one writer at a time: one connection does every write

    @property
    def connections(self) -> int:
        """One: a second connection would re-read the pages the first one just wrote."""
        return 1

    def __init__(self, path: str | os.PathLike[str], *, lease: float = DEFAULT_LEASE) -> None:
        super().__init__(lease=lease)
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:":
            raise InvalidRequestError(
                "a SQLite job store needs a file path (sqlite:///run.db), not memory",
                param="journal",
            )

    @property
    def url(self) -> str:
        """``sqlite:///`` and the path."""
        return f"sqlite:///{self.path}"

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in self.dialect.schema:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _execute(self, conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> Any:
        return conn.execute(sql, params)

    def _transaction(self, conn: sqlite3.Connection, ops: list[Op]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                _run(conn, op)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for op in ops:
            op.done = True

    def _claim(self, conn: sqlite3.Connection, params: dict[str, Any]) -> list[Sequence[Any]]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(self.dialect.claim, params).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return rows


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
