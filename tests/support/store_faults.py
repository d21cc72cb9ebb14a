"""Faults injected into a SQL job store's connections: transient errors, outages, slow writes.

``StoreFaults().install(store)`` wraps every connection ``store`` (a ``SqliteStore`` or
``PostgresStore``) makes from then on. Each statement first consults the faults:

- ``outage()`` (or ``down = True``): every statement and every new connection fails the way
  a database that went away fails (a lost connection: the driver's own error), until it
  ends;
- ``fail(count, match=..., transient=..., after=...)``: the next ``count`` statements whose
  SQL contains ``match`` (or for which ``match(sql, params)`` is true) fail, as a lost
  connection (``transient=True``) or as a refusal of that statement alone (a data error);
  ``after=True``: the statement runs first and its answer is lost (in autocommit: committed,
  and the client cannot know);
- ``slow``: seconds every statement takes first (a loaded server);
- ``error_rate`` / ``slow_rate`` with ``seed``: random transient errors and slow statements,
  for schedules (a model-based checker can drive these).

The errors are the drivers' real exception classes with the fields the store reads
(psycopg's ``sqlstate``, sqlite3's ``sqlite_errorcode``), raised inside the real
transactions, so the store's retries, reconnections, spool and recovery run as they would in
production. ``injected`` counts what was injected.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from nanobanana_async import BatchRun, JobResult, StoreUnavailableError
from nanobanana_async.batch.stores import SqlStore
from nanobanana_async.emulator import Emulator

__all__ = ["StoreFaults", "run_through"]

Match = str | Callable[[str, dict[str, Any]], bool] | None


class _Rule:
    def __init__(self, count: int, match: Match, transient: bool, after: bool) -> None:
        self.count, self.match, self.transient, self.after = count, match, transient, after

    def applies(self, sql: str, params: dict[str, Any]) -> bool:
        if self.count <= 0:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match in sql
        return self.match(sql, params)


class StoreFaults:
    """Faults for the connections of the stores it is installed on (thread-safe: the stores
    run statements in worker threads)."""

    def __init__(
        self, *, seed: int = 0, error_rate: float = 0.0, slow_rate: float = 0.0, slow: float = 0.0
    ) -> None:
        self.down = False
        self.slow = slow
        self.error_rate = error_rate
        self.slow_rate = slow_rate
        self._random = random.Random(seed)
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {"transient": 0, "refused": 0, "down": 0, "slow": 0}
        self.statements = 0

    def install(self, store: SqlStore) -> SqlStore:
        """Wrap every connection ``store`` makes from now on; returns ``store``."""
        connect = store._connect
        postgres = store.dialect.name == "postgres"

        def faulty_connect() -> Any:
            if self.down:
                self._count("down")
                raise self._error(postgres, transient=True)
            return _Connection(connect(), self, postgres)

        store._connect = faulty_connect  # type: ignore[method-assign]
        return store

    def fail(
        self, count: int = 1, *, match: Match = None, transient: bool = True, after: bool = False
    ) -> None:
        """Fail the next ``count`` statements that ``match`` (``after``: once they ran)."""
        with self._lock:
            self._rules.append(_Rule(count, match, transient, after))

    def clear(self) -> None:
        """Forget the rules not used up yet."""
        with self._lock:
            self._rules.clear()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The database is gone for the duration of the block."""
        self.down = True
        try:
            yield
        finally:
            self.down = False

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def before(self, sql: str, params: dict[str, Any], postgres: bool) -> _Rule | None:
        """Called before each statement: raise or wait as the faults say; a rule returned
        fails the statement once it ran."""
        with self._lock:
            self.statements += 1
            wait = self.slow if self.slow_rate == 0 else 0.0
            if self.slow_rate and self._random.random() < self.slow_rate:
                wait = self.slow
            rule = next((r for r in self._rules if r.applies(sql, params)), None)
            if rule is not None:
                rule.count -= 1
            random_error = bool(self.error_rate) and self._random.random() < self.error_rate
        if wait:
            self._count("slow")
            time.sleep(wait)
        if self.down:
            self._count("down")
            raise self._error(postgres, transient=True)
        if random_error:
            self._count("transient")
            raise self._error(postgres, transient=True)
        if rule is not None:
            self._count("transient" if rule.transient else "refused")
            if rule.after:
                return rule
            raise self._error(postgres, transient=rule.transient)
        return None

    @staticmethod
    def _error(postgres: bool, *, transient: bool) -> Exception:
        if postgres:
            import psycopg
            import psycopg.errors

            if transient:
                return psycopg.OperationalError(
                    "server closed the connection unexpectedly (injected)"
                )
            return psycopg.errors.DataError("value refused for this row (injected)")
        if transient:
            error = sqlite3.OperationalError("disk I/O error (injected)")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR
            return error
        refused = sqlite3.IntegrityError("CHECK constraint failed (injected)")
        refused.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT
        return refused


class _Connection:
    """A driver connection whose statements consult the faults first."""

    def __init__(self, conn: Any, faults: StoreFaults, postgres: bool) -> None:
        self._conn = conn
        self._faults = faults
        self._postgres = postgres
        self._lost = False

    def execute(self, sql: Any, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        text = sql if isinstance(sql, str) else str(sql)
        try:
            after = self._faults.before(
                text, params if isinstance(params, dict) else {}, self._postgres
            )
        except Exception as exc:
            # A lost connection stays lost; a refused statement leaves it usable.
            self._lost = self._lost or _lost(exc)
            raise
        if params is None:
            cursor = self._conn.execute(sql, *args, **kwargs)
        else:
            cursor = self._conn.execute(sql, params, *args, **kwargs)
        if after is not None:
            error = StoreFaults._error(self._postgres, transient=after.transient)
            self._lost = self._lost or _lost(error)
            raise error
        return cursor

    @property
    def broken(self) -> bool:
        return self._lost or self._faults.down or bool(getattr(self._conn, "broken", False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _lost(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return False  # SQLite has no connection to lose: the file is still there
    return getattr(exc, "sqlstate", "x") is None


async def run_through(
    run: BatchRun, emulator: Emulator, fault: Callable[[], object], *, in_flight: int
) -> tuple[list[JobResult], StoreUnavailableError | None]:
    """Consume ``run`` and, once ``in_flight`` paid requests are on the emulator, call
    ``fault`` (the store goes away). The results, and the error the run ended with, if it
    was the store's."""
    results: list[JobResult] = []
    failure: list[StoreUnavailableError] = []

    async def consume() -> None:
        try:
            async with run:
                async for result in run:
                    results.append(result)
        except StoreUnavailableError as exc:
            failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        with anyio.fail_after(60):  # a guard against a hang, not a timing assertion
            while emulator.stats.in_flight < in_flight:  # noqa: ASYNC110 - a counter
                await anyio.sleep(0.01)
        fault()
    return results, failure[0] if failure else None
