"""The connection side of the SQL job stores: options, connections, the schema, the spool.

:class:`SqlBackend` is what a backend (``sqlite.py``, ``postgres.py``) fills in: how to
connect, how to run statements and transactions, which errors mean "unreachable right now".
The store users hold (``sqlstore.py``) and a run's session (``session.py``) build on it.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio.to_thread

from .base import StoreError, StoreUnavailableError
from .group import Op
from .options import DEFAULT_LEASE, DEFAULT_RETRY_WINDOW, DEFAULT_STATEMENT_TIMEOUT
from .pool import Pool
from .recover import Recovered, apply_spooled
from .schema import SchemaAccess, ensure_schema
from .spool import Spool, default_spool_dir
from .sql import Dialect, Statements

__all__ = ["SqlBackend"]

logger = logging.getLogger("nanobanana_async")


class SqlBackend(abc.ABC):
    """A SQL database holding job rows, as the store and its sessions reach it.

    - ``lease``: seconds a run holds a job without renewing it (it renews every third of
      that); a killed run's jobs come back after it (at once for a process on this machine
      that is gone).
    - ``queue``: the name of this store's jobs in the database (``"default"``): stores on
      other queues share the database and never see them.
    - ``retry_window``: seconds a run keeps retrying, on new connections, a store that stopped
      answering (a restart, a failover) before it gives up (20); then it stops taking jobs
      and keeps the results of the jobs in flight in the spool.
    - ``statement_timeout``: seconds a statement may take before its connection is dropped
      and it is retried (30; 0 for no limit): a database that stops answering never hangs
      a run.
    - ``spool_dir``: where results the store could not take are kept (``spool.py``).
    - ``wait_for_lease``: a batch that finds one of its jobs held by another run waits until
      that run finishes it or its lease runs out (then resumes it, sends it, or reports it
      ambiguous) instead of skipping it as "held by another worker" (off).

    Each can also be given in the URL's query string. Methods open their own connection:
    the store object itself holds none.
    """

    dialect: Dialect
    writers = 1

    @property
    def connections(self) -> int:
        """Connections a session opens: its writers and one for claims and leases."""
        return self.writers + 1

    def _configure(self, values: Mapping[str, Any]) -> None:
        self.lease: float = values.get("lease", DEFAULT_LEASE)
        self.queue: str = values.get("queue", "default")
        self.retry_window: float = values.get("retry_window", DEFAULT_RETRY_WINDOW)
        self.statement_timeout: float | None = (
            values.get("statement_timeout", DEFAULT_STATEMENT_TIMEOUT) or None
        )
        self._spool_dir: pathlib.Path | None = values.get("spool_dir")
        self.wait_for_lease: bool = values.get("wait_for_lease", False)
        self.statements = Statements(self.dialect, self.queue)
        self.store_id: str | None = None  # read from the database on the first connection
        # False: a database without a job store is refused, not given an empty one (commands
        # that only read or change jobs already there, where a typo would read as empty).
        self.create = True

    # -- what a backend provides ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The store's URL, without a password."""

    @abc.abstractmethod
    def _connect(self) -> Any:
        """A new connection to the database (no statement run on it yet)."""

    @abc.abstractmethod
    def _errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exceptions that mean the database failed."""

    @abc.abstractmethod
    def _transient(self, exc: BaseException) -> bool:
        """``exc`` (one of :meth:`_errors`) means the database is unreachable right now, not
        that it refused the statement."""

    @abc.abstractmethod
    def _interrupt(self, conn: Any) -> None:
        """Make a statement running on ``conn`` (in another thread) fail now."""

    def _broken(self, conn: Any) -> bool:
        return False

    #: Runs its sessions' writes on the event loop's thread (``Pool``'s ``here``).
    writes_here = False

    def _here(self, conn: Any, here: bool) -> None:  # noqa: B027 - most backends need nothing
        """Set ``conn`` up for calls on the event loop's thread (never waiting for a lock),
        or for a worker thread."""

    def _busy(self, exc: BaseException) -> bool:
        """``exc`` says a lock is held elsewhere: waiting for it would block."""
        return False

    def _committed(self, writes: int) -> bool:
        """A session's transaction of ``writes`` writes committed: whether :meth:`_tidy`
        is due (SQLite checkpoints its WAL now and then)."""
        return False

    async def _tidy(self, pool: Pool) -> None:  # noqa: B027 - most backends need nothing
        """Upkeep a session runs on ``pool`` off the writes' path, when :meth:`_committed`
        says so."""

    def _schema(self, conn: Any) -> SchemaAccess:
        return _Schema(self, conn)

    @abc.abstractmethod
    def _atomic(self, conn: Any) -> contextlib.AbstractContextManager[None]:
        """A transaction on ``conn``: committed when the block ends, rolled back on error."""

    @abc.abstractmethod
    def _transaction(self, conn: Any, ops: list[Op]) -> None:
        """Run ``ops`` in one transaction, filling in each one's result."""

    @abc.abstractmethod
    def _execute(self, conn: Any, sql: str, params: dict[str, Any]) -> Any:
        """One statement in its own transaction; returns the cursor."""

    @abc.abstractmethod
    def _claim(self, conn: Any, params: dict[str, Any]) -> list[Sequence[Any]]:
        """Claim pending jobs under a lease (``params``); their rows."""

    def _pool(self, size: int, *, run: bool = False) -> Pool:
        """``size`` connections; ``run``: a run's, whose jobs in flight go to the spool when
        the store stays down (its error says where)."""
        return Pool(
            self._connect,
            size,
            setup=self._setup,
            errors=self._errors(),
            broken=self._broken,
            transient=self._transient,
            interrupt=self._interrupt,
            where=self.url,
            retry_window=self.retry_window,
            deadline=self.statement_timeout,
            hint=self._spool_hint if run else str,
            here=self._here if run and self.writes_here else None,
            busy=self._busy,
        )

    @abc.abstractmethod
    def _prepare(self, conn: Any) -> None:
        """Set a new connection up (pragmas, options) before its first statement."""

    def _setup(self, conn: Any) -> None:
        self._prepare(conn)
        self.store_id = ensure_schema(
            self._schema(conn), self.dialect, self.url, create=self.create
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- the spool --------------------------------------------------------------------------

    @property
    def spool(self) -> Spool:
        """Where this store's results go when it cannot take them (known once connected)."""
        directory = self._spool_dir or default_spool_dir()
        return Spool(directory / f"{self.store_id or 'unconnected'}-{self.queue}.jsonl")

    def _spool_hint(self) -> str:
        return (
            f"; results of the jobs in flight are kept in the spool {self.spool.path}, put "
            "into the store by the next run or worker, or by: nanobanana jobs recover --store "
            "URL"
        )

    async def recover(self, path: str | pathlib.Path | None = None) -> Recovered:
        """Put the spool (this store's, or the file at ``path``) back into the store.

        Runs on its own when a run or worker opens the store; ``nanobanana jobs recover``
        calls it. Entries that cannot be applied yet (their job is held by a worker right
        now) or belong to another store stay in the file.
        """
        pool = self._pool(1)
        await pool.open()
        try:
            return await self._recover(pool, Spool(path) if path is not None else None)
        finally:
            await pool.close()

    async def _recover(self, pool: Pool, spool: Spool | None = None) -> Recovered:
        spool = spool or self.spool
        if not await anyio.to_thread.run_sync(spool.pending):
            return Recovered(str(spool.path))
        taken = await anyio.to_thread.run_sync(spool.take)
        if taken is None:  # another process is putting it back right now
            return Recovered(str(spool.path))
        store_id = str(self.store_id)
        counts = {"applied": 0, "kept": 0, "refused": 0, "foreign": 0}
        kept: list[dict[str, Any]] = []

        def apply(conn: Any, entry: dict[str, Any]) -> str:
            with self._atomic(conn):  # conn.execute: no statement-level retries in it
                return apply_spooled(conn.execute, self.statements, store_id, entry)

        try:
            for number, entry in enumerate(taken.entries):
                try:
                    outcome = await pool.run(apply, entry)
                except StoreUnavailableError:
                    kept.extend(taken.entries[number:])
                    await anyio.to_thread.run_sync(taken.finish, kept)
                    raise
                except StoreError as exc:
                    logger.warning("spool %s: an entry was refused: %s", spool.path, exc)
                    outcome = "refused"
                counts[outcome] += 1
                if outcome != "applied":
                    kept.append(entry)
            await anyio.to_thread.run_sync(taken.finish, kept)
        finally:
            taken.release()
        return Recovered(str(spool.path), **counts)

    async def _once(self, fn: Any, *args: Any) -> Any:
        pool = self._pool(1)
        await pool.open()
        try:
            return await pool.run(fn, *args)
        finally:
            await pool.close()


class _Schema:
    """A connection as the schema checks use it (``schema.SchemaAccess``)."""

    def __init__(self, backend: SqlBackend, conn: Any) -> None:
        self._backend = backend
        self._conn = conn

    def query(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return list(self._conn.execute(sql, params).fetchall())

    def run(self, sql: str) -> None:
        self._conn.execute(sql)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._backend._atomic(self._conn):
            if self._backend.dialect.schema_lock:
                self._conn.execute(self._backend.dialect.schema_lock)
            yield
