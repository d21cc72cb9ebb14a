"""The shared job store: Postgres (extra ``postgres``: psycopg 3), for workers on many machines.

``journal="postgresql://user@host/db"``. Workers claim pending jobs with
``SELECT ... FOR UPDATE SKIP LOCKED``, so two workers never take the same job and neither
waits for the other. psycopg's async connection runs only on asyncio, so this store uses its
blocking connections from worker threads (which works on Trio too), and commits the writes
of many jobs together (pipeline mode: one round trip per transaction).

Imported only when a Postgres store is used: ``import nanobanana_async`` never loads psycopg.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .base import StoreError
from .group import Op
from .sql import TABLE, Dialect
from .sqlstore import DEFAULT_LEASE, SqlStore

try:
    import psycopg
    import psycopg.errors
except ModuleNotFoundError:  # pragma: no cover - the extra is not installed
    raise StoreError(
        "a Postgres job store needs psycopg: pip install 'nanobanana-async[postgres]'"
    ) from None

__all__ = ["PostgresStore", "redact"]

_DIALECT = Dialect(
    name="postgres",
    now="extract(epoch from clock_timestamp())",
    real="DOUBLE PRECISION",
    lock=" FOR UPDATE SKIP LOCKED",
)
# Any constant: one advisory lock so that workers starting together create the table once.
_SCHEMA_LOCK = 0x6E616E6F
_TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def redact(url: str) -> str:
    """``url`` without its password (URL or ``key=value`` form)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url)


class PostgresStore(SqlStore):
    """A job store in the Postgres database at ``url`` (its table is created if missing).

    Workers anywhere that reach the database share its jobs. ``writers``: transactions a
    session runs at once (each on its own connection, plus one for claims and leases).
    """

    dialect = _DIALECT

    def __init__(self, url: str, *, lease: float = DEFAULT_LEASE, writers: int = 4) -> None:
        super().__init__(lease=lease)
        self._dsn = url
        self.writers = max(1, int(writers))

    @property
    def url(self) -> str:
        """The connection URL without its password."""
        return redact(self._dsn)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (psycopg.Error,)

    def _broken(self, conn: psycopg.Connection[Any]) -> bool:
        return bool(conn.closed or conn.broken)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        exists = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
        if exists is not None and exists[0] is not None:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in self.dialect.schema:
                conn.execute(statement, prepare=False)

    def _execute(self, conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> Any:
        # One statement in autocommit: retried as a whole if Postgres picked it as the victim
        # of a deadlock (it then changed nothing).
        for attempt in range(5):
            try:
                return conn.execute(sql, params)
            except _TRANSIENT:
                if attempt == 4:
                    raise
        return None

    def _transaction(self, conn: psycopg.Connection[Any], ops: list[Op]) -> None:
        for attempt in range(5):
            try:
                cursors = []
                with conn.pipeline(), conn.transaction():
                    for op in ops:
                        cursors.append([conn.execute(sql, p) for sql, p in op.statements])
                break
            except _TRANSIENT:
                if attempt == 4:
                    raise
        for op, batch in zip(ops, cursors, strict=True):
            if op.want == "row":
                op.result = batch[-1].fetchone() if batch else None
            elif op.want == "rowcount":
                op.result = batch[-1].rowcount if batch else 0
            elif op.want == "total":
                op.result = sum(max(c.rowcount, 0) for c in batch)
            op.done = True

    def _claim(self, conn: psycopg.Connection[Any], params: dict[str, Any]) -> list[Sequence[Any]]:
        for attempt in range(5):
            try:
                return conn.execute(self.dialect.claim, params).fetchall()
            except _TRANSIENT:
                if attempt == 4:
                    raise
        return []
