"""What the SQLite and Postgres stores share: the store users hold and a run's session.

Backends (``sqlite.py``, ``postgres.py``) say how to connect and how to run statements and
transactions; everything about jobs, states and leases is here and in ``sql.py``.
"""

from __future__ import annotations

import abc
import json
import math
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import anyio

from ...errors import InvalidRequestError
from ...models import Job
from ...pricing import PricingTable, as_job
from ..journal import JobIds, JournalRecord
from ..results import JobResult
from .base import Begin, StoredJob, StoreError, StoreStatus, new_owner, owner_is_dead
from .group import GroupCommit, Op
from .pool import Pool
from .sql import ROW_FIELDS, Dialect, clean_text, json_list

__all__ = ["SqlSession", "SqlStore"]

DEFAULT_LEASE = 60.0
_ADD_CHUNK = 5_000
_LOOKUP_CHUNK = 500
RETRYABLE_STATES = ("ambiguous", "failed", "skipped")


def _decoded(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        values = json.loads(text)
    except ValueError:
        return ()
    return tuple(v for v in values if isinstance(v, str)) if isinstance(values, list) else ()


def row_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A job row as a dict (``urls`` and ``files`` decoded)."""
    data = dict(zip(ROW_FIELDS, row, strict=True))
    data["urls"] = list(_decoded(data["urls"]))
    data["files"] = list(_decoded(data["files"]))
    return data


def _record(data: dict[str, Any]) -> JournalRecord:
    return JournalRecord(
        id=data["id"],
        status="succeeded" if not data["error"] else "failed",
        urls=tuple(data["urls"]),
        credits=int(data["credits"]),
        attempts=int(data["attempts"]),
        paths=tuple(data["files"]),
        prompt=data["prompt"],
        model=data["model"],
        image_size=data["image_size"],
        num=int(data["num"]),
    )


class SqlStore(abc.ABC):
    """A job store in a SQL database: a row per job, claimed with leases.

    ``lease``: seconds a run holds a job without renewing it (it renews every third of
    that); a killed run's jobs come back after it (at once for a process on this machine
    that is gone). Methods open their own connection: the store object itself holds none.
    """

    dialect: Dialect
    writers = 1

    @property
    def connections(self) -> int:
        """Connections a session opens: its writers and one for claims and leases."""
        return self.writers + 1

    def __init__(self, *, lease: float = DEFAULT_LEASE) -> None:
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease > 0:
            raise InvalidRequestError(f"lease must be positive seconds, got {lease!r}")
        if math.isinf(lease):
            raise InvalidRequestError("lease must be finite")
        self.lease = float(lease)

    # -- what a backend provides ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The store's URL, without a password."""

    @abc.abstractmethod
    def _connect(self) -> Any:
        """A new connection to the database."""

    @abc.abstractmethod
    def _errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exceptions that mean the database failed."""

    def _broken(self, conn: Any) -> bool:
        return False

    @abc.abstractmethod
    def _setup(self, conn: Any) -> None:
        """Create the table and indexes if missing."""

    @abc.abstractmethod
    def _transaction(self, conn: Any, ops: list[Op]) -> None:
        """Run ``ops`` in one transaction, filling in each one's result."""

    @abc.abstractmethod
    def _execute(self, conn: Any, sql: str, params: dict[str, Any]) -> Any:
        """One statement in its own transaction; returns the cursor."""

    @abc.abstractmethod
    def _claim(self, conn: Any, params: dict[str, Any]) -> list[Sequence[Any]]:
        """Claim pending jobs under a lease (``params``); their rows."""

    def _pool(self, size: int) -> Pool:
        return Pool(
            self._connect_ready,
            size,
            errors=self._errors(),
            broken=self._broken,
            where=self.url,
        )

    def _connect_ready(self) -> Any:
        conn = self._connect()
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- the session a run uses -------------------------------------------------------------

    async def connect(self, *, worker: bool = False) -> SqlSession:
        """Open a session for one run (the batch runner calls this)."""
        session = SqlSession(self, worker=worker)
        await session.open()
        return session

    # -- what users call --------------------------------------------------------------------

    async def _once(self, fn: Any, *args: Any) -> Any:
        pool = self._pool(1)
        await pool.open()
        try:
            return await pool.run(fn, *args)
        finally:
            await pool.close()

    async def add(self, jobs: Iterable[Job | str], *, pricing: PricingTable | None = None) -> int:
        """Add jobs as ``pending``; returns how many were new.

        Idempotent by job id: a job whose id is already in the store (whatever its state) is
        left alone, so adding the same file twice adds nothing. Jobs without an id get one
        from their fields and occurrence, as a batch names them.
        """
        ids = JobIds()

        def insert(conn: Any, rows: list[dict[str, Any]]) -> int:
            base = self._execute(conn, self.dialect.next_index, {}).fetchone()[0]
            for offset, row in enumerate(rows):
                row["idx"] = base + offset
            op = Op([(self.dialect.add, row) for row in rows], "total")
            self._transaction(conn, [op])
            return int(op.result)

        pool = self._pool(1)
        await pool.open()
        added = 0
        try:
            chunk: list[dict[str, Any]] = []
            for raw in jobs:
                job = as_job(raw, pricing)
                chunk.append(
                    {
                        "id": ids.assign(job),
                        "prompt": job.prompt,
                        "model": job.model,
                        "image_size": job.image_size,
                        "num": job.num,
                        "key": uuid.uuid4().hex,
                    }
                )
                if len(chunk) >= _ADD_CHUNK:
                    added += await pool.run(insert, chunk)
                    chunk = []
            if chunk:
                added += await pool.run(insert, chunk)
        finally:
            await pool.close()
        return added

    async def status(self) -> StoreStatus:
        """Jobs by state, credits spent and may-have-been-spent, the first ambiguous ids."""

        def read(conn: Any) -> StoreStatus:
            counts: dict[str, int] = {}
            spent = maybe = 0
            for state, count, credits, uncertain, reserved in self._execute(
                conn, self.dialect.status, {}
            ).fetchall():
                counts[state] = int(count)
                spent += int(credits)
                maybe += int(uncertain) + int(reserved)
            ambiguous = tuple(r[0] for r in self._execute(conn, self.dialect.ambiguous, {}))
            return StoreStatus(counts, spent, maybe, ambiguous)

        result: StoreStatus = await self._once(read)
        return result

    async def retry(self, *states: str) -> int:
        """Put jobs in ``states`` (``"ambiguous"``, ``"failed"``, ``"skipped"``) back to
        ``pending``; returns how many. Retrying ambiguous jobs may pay for them twice."""
        bad = [s for s in states if s not in RETRYABLE_STATES]
        if bad or not states:
            raise InvalidRequestError(
                f"retry takes states among {', '.join(RETRYABLE_STATES)}, got {states!r}"
            )
        sql = self.dialect.retry(states)

        def update(conn: Any) -> int:
            return int(self._execute(conn, sql, {}).rowcount)

        count: int = await self._once(update)
        return count

    async def rows(
        self, *, done_only: bool = False, page: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every job as a dict, in input order, read a page at a time."""
        sql = self.dialect.page_done if done_only else self.dialect.page
        pool = self._pool(1)
        await pool.open()
        try:
            after: tuple[int, str] = (-(2**62), "")

            def read(conn: Any, idx: int, last: str) -> list[Sequence[Any]]:
                return list(self._execute(conn, sql, {"idx": idx, "id": last, "n": page}))

            while True:
                batch = await pool.run(read, *after)
                for row in batch:
                    yield row_dict(row)
                if len(batch) < page:
                    return
                after = (int(batch[-1][1]), str(batch[-1][0]))
        finally:
            await pool.close()

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """One job's row as a dict, or None."""

        def read(conn: Any) -> Sequence[Any] | None:
            row: Sequence[Any] | None = self._execute(
                conn, self.dialect.row, {"id": job_id}
            ).fetchone()
            return row

        row = await self._once(read)
        return row_dict(row) if row is not None else None

    async def set_files(self, job_id: str, files: Sequence[str], error: str | None = None) -> None:
        """Record the files of a done job (``nanobanana jobs download``)."""
        params = {"id": job_id, "files": json_list(files), "error": clean_text(error)}
        await self._once(lambda conn: self._execute(conn, self.dialect.files, params))

    async def generated(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` whose job is done (generated and paid for)."""
        wanted = list(ids)

        def read(conn: Any) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                params = {f"i{n}": value for n, value in enumerate(chunk)}
                cursor = self._execute(conn, self.dialect.generated(len(chunk)), params)
                found.update(r[0] for r in cursor)
            return found

        if not wanted:
            return set()
        result: set[str] = await self._once(read)
        return result


class SqlSession:
    """One run's session on a :class:`SqlStore`: its owner name, connections and writes."""

    def __init__(self, store: SqlStore, *, worker: bool) -> None:
        self.store = store
        self.worker = worker
        self.owner = new_owner()
        self.lease = store.lease
        self._sql = store.dialect
        self._pool = store._pool(store.connections)
        self._group = GroupCommit(self._apply, store.writers)
        self._generated: set[str] = set()

    async def open(self) -> None:
        await self._pool.open()
        await self.maintain()

    async def _apply(self, ops: list[Op]) -> None:
        try:
            await self._pool.run(self.store._transaction, ops)
        except StoreError:
            if len(ops) == 1:
                raise
            for op in ops:  # one write that fails must not fail the others with it
                try:
                    await self._pool.run(self.store._transaction, [op])
                except StoreError as exc:
                    op.error, op.done = exc, True

    async def _write(self, sql: str, params: dict[str, Any], want: str = "rowcount") -> Any:
        params["owner"] = self.owner
        return await self._group.submit(Op([(sql, params)], want))

    # -- batch mode -------------------------------------------------------------------------

    async def begin(self, job_id: str, index: int, job: Job) -> Begin:
        params = {
            "id": job_id,
            "idx": index,
            "prompt": job.prompt,
            "model": job.model,
            "image_size": job.image_size,
            "num": job.num,
            "key": uuid.uuid4().hex,
            "owner": self.owner,
            "lease": self.lease,
        }
        op = Op([(self._sql.begin, params), (self._sql.row, {"id": job_id})], "row")
        row = await self._group.submit(op)
        data = row_dict(row)
        state = data["state"]
        if state == "claimed" and data["lease_owner"] == self.owner:
            return Begin(idempotency_key=data["idempotency_key"])
        if state == "done":
            return Begin(record=_record(data))
        if state == "ambiguous":
            return Begin(
                skip="ambiguous: an earlier run stopped while sending it, so it may have been "
                "charged; not sent again (nanobanana jobs retry --ambiguous sends it anyway)"
            )
        return Begin(skip=f"held by another worker ({data['lease_owner']}): not sent by this run")

    # -- a job's progress -------------------------------------------------------------------

    async def sending(self, job_id: str, idempotency_key: str | None, credits: int) -> bool:
        params = {"id": job_id, "key": idempotency_key, "credits": credits}
        return bool(await self._write(self._sql.sending, params))

    async def record(self, result: JobResult, *, status: str | None = None) -> None:
        job_id = result.id
        if job_id is None:
            return
        generation = result.generation
        if generation is not None:
            params: dict[str, Any] = {
                "id": job_id,
                "files": json_list([str(p) for p in result.paths]),
                "error": clean_text(str(result.error)) if result.error else None,
            }
            if result.resumed or job_id in self._generated:
                self._generated.discard(job_id)
                await self._write(self._sql.files, params)
                return
            if status == "generated":
                self._generated.add(job_id)
            params.update(
                urls=json_list(generation.urls),
                credits=result.credits,
                uncertain=result.credits_may_have_been_spent,
                attempts=result.attempts,
            )
            await self._write(self._sql.done, params)
            return
        if result.status == "skipped" and self.worker:
            # A worker skips what it cannot send now (budget, a stopped batch): another may.
            await self.release(job_id)
            return
        params = {
            "id": job_id,
            "state": "skipped" if result.status == "skipped" else "failed",
            "uncertain": result.credits_may_have_been_spent,
            "attempts": result.attempts,
            "error": clean_text(str(result.error)) if result.error else None,
            "reason": clean_text(result.reason),
        }
        await self._write(self._sql.finish, params)

    async def release(self, job_id: str) -> None:
        await self._write(self._sql.release, {"id": job_id})

    async def unsettled(self, job_id: str, credits: int) -> None:
        await self._write(self._sql.unsettled, {"id": job_id, "uncertain": credits})

    # -- workers ----------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[StoredJob]:
        params = {"owner": self.owner, "lease": self.lease, "n": limit}
        rows = await self._pool.run(self.store._claim, params)
        jobs = [StoredJob(r[0], int(r[1]), r[2], r[3], r[4], int(r[5]), r[6]) for r in rows]
        jobs.sort(key=lambda j: j.index)  # RETURNING has no order of its own
        return jobs

    async def maintain(self) -> None:
        sql, store = self._sql, self.store

        def run(conn: Any) -> None:
            store._execute(conn, sql.heartbeat, {"owner": self.owner, "lease": self.lease})
            store._execute(conn, sql.reap_expired, {})
            for (owner,) in store._execute(conn, sql.owners, {}).fetchall():
                if owner and owner != self.owner and owner_is_dead(owner):
                    store._execute(conn, sql.reap_owner, {"owner": owner})

        await self._pool.run(run)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._group.flush()
                await self._pool.run(
                    lambda conn: self.store._execute(conn, self._sql.close, {"owner": self.owner})
                )
            finally:
                await self._pool.close()
