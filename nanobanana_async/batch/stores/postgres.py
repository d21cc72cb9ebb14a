"""The shared job store: Postgres (extra ``postgres``: psycopg 3), for workers on many machines.

``journal="postgresql://user@host/db"``. Workers claim pending jobs with
``SELECT ... FOR UPDATE SKIP LOCKED``, so two workers never take the same job and neither
waits for the other. psycopg's async connection runs only on asyncio, so this store uses its
blocking connections from worker threads (which works on Trio too), and commits the writes
of many jobs together (pipeline mode: one round trip per transaction).

Works directly and through pgbouncer in session or transaction pooling: no session state,
every transaction in one round trip, and server-side prepared statements only on a
connection that is the server's own (psycopg prepares a statement after five uses; behind a
transaction pooler the next transaction may run on a server connection holding another
client's ``_pg3_0``). A pooler is recognised by the backend key it answers a connection with,
which is its own, not the server's.

The URL's query string takes the store's options (``queue``, ``lease``, ``writers``,
``retry_window``, ``statement_timeout``, ``spool_dir``, ``wait_for_lease``) and libpq's
connection parameters, passed on to libpq. Unless the URL says otherwise, connections use
``connect_timeout=10`` and TCP keepalives (``keepalives_idle=30``, ``keepalives_interval=10``,
``keepalives_count=3``), so a database behind a broken network is noticed in about a minute
even when idle.

Imported only when a Postgres store is used: ``import nanobanana_async`` never loads psycopg.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Sequence
from typing import Any, Final

from ...urls import redact_url
from .base import StoreError
from .group import Op
from .options import SQL_OPTIONS, positive_int, resolve
from .sql import Dialect
from .sqlstore import SqlStore

try:
    import psycopg
    import psycopg.conninfo
    import psycopg.errors
    import psycopg.pq
except ModuleNotFoundError:  # pragma: no cover - the extra is not installed
    raise StoreError(
        "a Postgres job store needs psycopg: pip install 'nanobanana-async[postgres]'"
    ) from None

__all__ = ["CONNECTION_DEFAULTS", "PostgresStore"]

# Any constant: one advisory lock so that workers starting together create the table once.
_SCHEMA_LOCK = 0x6E616E6F
_DIALECT = Dialect(
    name="postgres",
    now="extract(epoch from clock_timestamp())",
    real="DOUBLE PRECISION",
    lock=" FOR UPDATE SKIP LOCKED",
    # The catalog read with this statement's snapshot (to_regclass may answer from a cache
    # that has not seen a table another worker created while this one waited for the lock).
    table_exists="SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
    "WHERE schemaname = current_schema() AND tablename = %(name)s)",
    schema_lock=f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})",
)
_PREPARE_THRESHOLD = 5  # psycopg's default
_DEADLOCKS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
# SQLSTATE classes that mean "not now": connection exceptions (08, pgbouncer's too),
# insufficient resources (53), operator intervention (57: shutdown, crash, cancel), system
# errors (58) and a rolled-back transaction (40).
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})

CONNECTION_DEFAULTS: Final = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


@functools.cache
def _libpq_parameters() -> frozenset[str]:
    """The connection parameters the libpq in use knows (``host``, ``sslmode``, ...)."""
    return frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())


class PostgresStore(SqlStore):
    """A job store in the Postgres database at ``url`` (its table is created if missing, and
    upgraded in place when an older version made it).

    Workers anywhere that reach the database share its jobs. ``writers``: transactions a
    session runs at once (each on its own connection, plus one for claims and leases). Other
    options: see :class:`SqlStore`; each may also be given in the URL.
    """

    dialect = _DIALECT

    def __init__(
        self,
        url: str,
        *,
        lease: float | None = None,
        writers: int | None = None,
        queue: str | None = None,
        retry_window: float | None = None,
        statement_timeout: float | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        wait_for_lease: bool | None = None,
    ) -> None:
        given = {
            "lease": lease,
            "writers": writers,
            "queue": queue,
            "retry_window": retry_window,
            "statement_timeout": statement_timeout,
            "spool_dir": spool_dir,
            "wait_for_lease": wait_for_lease,
        }
        is_url = url.startswith(("postgresql://", "postgres://"))
        dsn, values = resolve(
            url if is_url else None,
            given,
            options={**SQL_OPTIONS, "writers": positive_int},
            passthrough=_libpq_parameters(),
        )
        self._configure(values)
        self.writers = values.get("writers", 4)
        self._dsn = dsn or url
        try:
            named = psycopg.conninfo.conninfo_to_dict(self._dsn)
            defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in named}
            self._conninfo = psycopg.conninfo.make_conninfo(self._dsn, **defaults)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"job store {self.url}: {exc}") from None

    @property
    def url(self) -> str:
        """The connection URL without its password."""
        return redact_url(self._dsn)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (psycopg.Error,)

    def _transient(self, exc: BaseException) -> bool:
        state = getattr(exc, "sqlstate", None)
        if state is None:  # libpq's own: connection refused or lost, a timeout
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return str(state)[:2] in _TRANSIENT_CLASSES

    def _interrupt(self, conn: psycopg.Connection[Any]) -> None:
        # The thread running the statement waits on this socket: shut down, it wakes up
        # with a lost connection (a cancel request would need the server to answer).
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def _broken(self, conn: psycopg.Connection[Any]) -> bool:
        return bool(conn.closed or conn.broken)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        # A pooler (pgbouncer, and any that routes cancel requests) answers the connection
        # with a backend key of its own: the server's pid then differs from it. Only a
        # connection that is the server's own may keep prepared statements, which live in
        # that server session (psycopg prepares a statement after 5 uses).
        if row is not None and row[0] == conn.info.backend_pid:
            conn.prepare_threshold = _PREPARE_THRESHOLD

    def _atomic(self, conn: psycopg.Connection[Any]) -> contextlib.AbstractContextManager[Any]:
        return conn.transaction()

    def _execute(self, conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> Any:
        # One statement in autocommit: retried as a whole if Postgres picked it as the victim
        # of a deadlock (it then changed nothing).
        for attempt in range(5):
            try:
                return conn.execute(sql, params)
            except _DEADLOCKS:
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
            except _DEADLOCKS:
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
                return conn.execute(self.statements.claim, params).fetchall()
            except _DEADLOCKS:
                if attempt == 4:
                    raise
        return []
