"""What the SQLite and Postgres stores share: the store users hold, and what they ask of it.

Backends (``sqlite.py``, ``postgres.py``) say how to connect and how to run statements and
transactions (``backend.py``); everything about jobs, states and leases is here, in
``session.py`` (a run's session) and in ``sql.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import anyio.to_thread
import attrs

from ...errors import InvalidRequestError
from ...models import Job
from ...pricing import PricingTable, as_job
from ..journal import JobIds
from .backend import SqlBackend
from .base import StoreStatus
from .group import Op
from .session import SqlSession
from .sql import clean_text, json_list, row_dict

__all__ = ["SqlStore"]

_ADD_CHUNK = 5_000
_LOOKUP_CHUNK = 500
RETRYABLE_STATES = ("ambiguous", "failed", "skipped")


class SqlStore(SqlBackend):
    """A job store in a SQL database: a row per job, claimed with leases (options: see
    :class:`SqlBackend`)."""

    # -- the session a run uses -------------------------------------------------------------

    async def connect(self, *, worker: bool = False) -> SqlSession:
        """Open a session for one run (the batch runner calls this)."""
        session = SqlSession(self, worker=worker)
        await session.open()
        return session

    # -- what users call --------------------------------------------------------------------

    async def add(self, jobs: Iterable[Job | str], *, pricing: PricingTable | None = None) -> int:
        """Add jobs as ``pending``; returns how many were new.

        Idempotent by job id: a job whose id is already in the store (whatever its state) is
        left alone, so adding the same file twice adds nothing. Jobs without an id get one
        from their fields and occurrence, as a batch names them.
        """
        ids = JobIds()
        sql = self.statements

        def insert(conn: Any, rows: list[dict[str, Any]]) -> int:
            base = self._execute(conn, sql.next_index, {}).fetchone()[0]
            for offset, row in enumerate(rows):
                row["idx"] = base + offset
            op = Op([(sql.add, row) for row in rows], "total")
            self._transaction(conn, [op])
            return int(op.result)

        pool = self._pool(1)
        await pool.open()
        added = 0
        try:
            for chunk in _chunks(ids, jobs, pricing):
                added += await pool.run(insert, chunk)
        finally:
            await pool.close()
        return added

    async def status(self) -> StoreStatus:
        """Jobs by state, credits spent and may-have-been-spent, the first ambiguous ids."""
        sql = self.statements

        def read(conn: Any) -> StoreStatus:
            counts: dict[str, int] = {}
            spent = maybe = 0
            for state, count, credits, uncertain, reserved in self._execute(
                conn, sql.status, {}
            ).fetchall():
                counts[state] = int(count)
                spent += int(credits)
                maybe += int(uncertain) + int(reserved)
            ambiguous = tuple(r[0] for r in self._execute(conn, sql.ambiguous, {}))
            return StoreStatus(counts, spent, maybe, ambiguous)

        result: StoreStatus = await self._once(read)
        spooled = await anyio.to_thread.run_sync(self.spool.count)
        return attrs.evolve(result, spooled=spooled) if spooled else result

    async def retry(self, *states: str) -> int:
        """Put jobs in ``states`` (``"ambiguous"``, ``"failed"``, ``"skipped"``) back to
        ``pending``; returns how many. Retrying ambiguous jobs may pay for them twice."""
        bad = [s for s in states if s not in RETRYABLE_STATES]
        if bad or not states:
            raise InvalidRequestError(
                f"retry takes states among {', '.join(RETRYABLE_STATES)}, got {states!r}"
            )
        sql = self.statements.retry(states)

        def update(conn: Any) -> int:
            return int(self._execute(conn, sql, {}).rowcount)

        count: int = await self._once(update)
        return count

    async def rows(
        self, *, done_only: bool = False, page: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every job as a dict, in input order, read a page at a time."""
        sql = self.statements.page_done if done_only else self.statements.page
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
                conn, self.statements.row, {"id": job_id}
            ).fetchone()
            return row

        row = await self._once(read)
        return row_dict(row) if row is not None else None

    async def set_files(self, job_id: str, files: Sequence[str], error: str | None = None) -> None:
        """Record the files of a done job (``nanobanana jobs download``)."""
        params = {"id": job_id, "files": json_list(files), "error": clean_text(error)}
        await self._once(lambda conn: self._execute(conn, self.statements.files, params))

    async def generated(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` whose job is done (generated and paid for)."""
        wanted = list(ids)

        def read(conn: Any) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                params = {f"i{n}": value for n, value in enumerate(chunk)}
                cursor = self._execute(conn, self.statements.generated(len(chunk)), params)
                found.update(r[0] for r in cursor)
            return found

        if not wanted:
            return set()
        result: set[str] = await self._once(read)
        return result


def _chunks(
    ids: JobIds, jobs: Iterable[Job | str], pricing: PricingTable | None
) -> Iterator[list[dict[str, Any]]]:
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
            yield chunk
            chunk = []
    if chunk:
        yield chunk
