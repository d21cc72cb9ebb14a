"""The JSONL journal as a job store: ``journal="run.jsonl"`` (or any path).

It records and resumes; it has no pending jobs for workers, no leases, and no ``sending``
state: a SIGKILL may re-send the jobs that were in flight (SQLite or Postgres keep them as
ambiguous instead). A job whose answer was lost after its request left, or that was stopped
while it was being sent (a batch cancelled, a grace period that ran out), is written as
``"status": "ambiguous"``, and a line torn by a full disk or a crash makes its job ambiguous
too: a rerun skips them rather than pay for them again.
A write that fails is a :class:`StoreError`, never a bare ``OSError``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import anyio
import anyio.to_thread

from ...models import Job
from ..journal import UNSETTLED, Journal
from ..results import JobResult
from .base import Begin, StoredJob, StoreError

__all__ = ["JsonlSession", "JsonlStore"]


class JsonlStore:
    """The JSONL journal at ``path``: one line per finished job, held by one run at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @property
    def url(self) -> str:
        """The journal's path."""
        return self.path

    def __repr__(self) -> str:
        return f"JsonlStore({self.path!r})"

    async def connect(self, *, worker: bool = False) -> JsonlSession:
        """Open (and lock) the journal for one run."""
        if worker:
            raise StoreError(
                f"a JSONL journal ({self.path}) holds no pending jobs for a worker: use a "
                "SQLite (sqlite:///jobs.db) or Postgres (postgresql://...) store"
            )
        return JsonlSession(await anyio.to_thread.run_sync(Journal, self.path))

    async def generated(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` the journal has a generation for."""
        if not await anyio.Path(self.path).exists():
            return set()
        journal = await anyio.to_thread.run_sync(Journal, self.path)
        try:
            return {i for i in ids if journal.resumable(i) is not None}
        finally:
            journal.close()


class JsonlSession:
    """A run's hold on a JSONL journal (the file lock)."""

    lease = math.inf

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def begin(self, job_id: str, index: int, job: Job) -> Begin:
        unsure = self.journal.unsure(job_id)
        if unsure is not None:
            return Begin(
                skip=f"ambiguous: {unsure}; not sent again (give the job a new id, or use a "
                "new journal, to send it anyway)"
            )
        return Begin(record=self.journal.resumable(job_id))

    async def sending(
        self, job_id: str, idempotency_key: str | None, credits: int, *, uncertain: int = 0
    ) -> bool:
        return True

    async def record(self, result: JobResult, *, status: str | None = None) -> None:
        self._write(result.to_record(status=status), result.id)

    async def release(self, job_id: str) -> None:
        return None

    async def unsettled(self, job_id: str, credits: int) -> None:
        entry = {
            "id": job_id,
            "status": "ambiguous",
            "credits": 0,
            "credits_may_have_been_spent": credits,
            "reason": UNSETTLED,
        }
        self._write(entry, job_id)

    def _write(self, entry: dict[str, object], job_id: str | None) -> None:
        journal = self.journal
        try:
            journal.write(entry)
        except OSError as exc:
            what = f"job {job_id!r}" if job_id is not None else "a job"
            raise StoreError(
                f"cannot write the journal {journal.path}: {exc.strerror or exc}; the result of "
                f"{what} may have been charged without a record. Free the space (or fix the "
                "disk), then run again: a job whose line was cut short is kept as ambiguous"
            ) from None

    async def claim(self, limit: int) -> list[StoredJob]:
        return []

    async def maintain(self) -> None:
        return None

    async def close(self) -> None:
        self.journal.close()
