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
from .pool import Pool
from .sql import Dialect
from .sqlstore import SqlStore

__all__ = ["SqliteStore"]

_BUSY_TIMEOUT_MS = 30_000  # how long a worker thread waits for another process's lock
_CHECKPOINT_WRITES = 512  # writes between two checkpoints of a run's session

_DIALECT = Dialect(
    name="sqlite",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    real="REAL",
    lock="",
    table_exists="SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = :name",
    # A rowid table (the key (queue, id) a unique index beside it), not WITHOUT ROWID: job ids
    # are hashes, so rows keyed by them land on random pages, and a commit writes every page
    # it touched to the WAL. In rowid order a batch's new rows share the last pages and its
    # results update rows written moments before; only the small key index stays random.
    # (Tables made WITHOUT ROWID by earlier versions keep working: the SQL is the same.)
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
        self._uncheckpointed = 0  # writes committed since the last checkpoint
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

    # A run's writes go on the event loop's thread (``Pool``): a transaction of a few dozen
    # short statements in a local file takes less time than the hops to a worker thread and
    # back. On that thread nothing may wait: a lock held by another process makes the write
    # go to a worker thread (busy_timeout 0 here, 30 s there), and the WAL is checkpointed in
    # a worker thread every ``_CHECKPOINT_WRITES`` writes (the checkpoint copies pages into
    # the database file and syncs it), not by the commit that happens to cross SQLite's
    # threshold.
    writes_here = True

    def _here(self, conn: sqlite3.Connection, here: bool) -> None:
        if here:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA busy_timeout = 0")
        else:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

    def _busy(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

    def _committed(self, writes: int) -> bool:
        self._uncheckpointed += writes
        if self._uncheckpointed < _CHECKPOINT_WRITES:
            return False
        self._uncheckpointed = 0
        return True

    async def _tidy(self, pool: Pool) -> None:
        await pool.run(_checkpoint)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
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


def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE never waits for anyone. Run while the session writes nothing, it copies every
    # frame, so that the next write starts the WAL over instead of making it longer.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


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
