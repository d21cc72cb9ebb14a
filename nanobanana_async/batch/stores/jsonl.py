"""The JSONL journal as a job store: ``journal="run.jsonl"`` (or any path).

It records and resumes; it has no pending jobs for workers, no leases, and no ``sending``
state: a SIGKILL may re-send the jobs that were in flight (SQLite or Postgres keep them as
ambiguous instead). A job whose answer was lost after its request left, or that was stopped
while it was being sent (a batch cancelled, a grace period that ran out), is written as
``"status": "ambiguous"``, and a line torn by a full disk or a crash makes its job ambiguous
too: a rerun skips them rather than pay for them again.

A write that fails (a full disk) is a :class:`StoreError`, never a bare ``OSError``, and the
line it could not write is kept in a spool of the journal's own (``spool.py``: a file in the
spool directory named after the journal's path), as are the lines of the jobs still in flight
when the run stops: the next run on the journal puts them back into it before it starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Iterable

import anyio
import anyio.to_thread

from ...models import Job
from ..journal import Journal
from ..results import JobResult
from .base import Begin, StoredJob, StoreError
from .spool import Spool, default_spool_dir

__all__ = ["JsonlSession", "JsonlStore"]

logger = logging.getLogger("nanobanana_async")


class JsonlStore:
    """The JSONL journal at ``path``: one line per finished job, held by one run at a time.

    ``spool_dir``: where lines the journal could not take are kept until the next run puts
    them back (default: the SQL stores' spool directory, ``$XDG_STATE_HOME/nanobanana/spool``).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, spool_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = os.fspath(path)
        self._spool_dir = pathlib.Path(spool_dir) if spool_dir is not None else None

    @property
    def url(self) -> str:
        """The journal's path."""
        return self.path

    def __repr__(self) -> str:
        return f"JsonlStore({self.path!r})"

    @property
    def spool(self) -> Spool:
        """Where this journal's lines go when it cannot take them: one file per journal."""
        where = os.path.realpath(self.path).encode(errors="surrogateescape")
        name = f"journal-{hashlib.blake2b(where, digest_size=8).hexdigest()}.jsonl"
        return Spool((self._spool_dir or default_spool_dir()) / name)

    async def connect(self, *, worker: bool = False) -> JsonlSession:
        """Open (and lock) the journal for one run, its spool put back first."""
        if worker:
            raise StoreError(
                f"a JSONL journal ({self.path}) holds no pending jobs for a worker: use a "
                "SQLite (sqlite:///jobs.db) or Postgres (postgresql://...) store"
            )
        return JsonlSession(await anyio.to_thread.run_sync(self._open), self.spool)

    def _open(self) -> Journal:
        journal = Journal(self.path)
        try:
            self._recover(journal)
        except BaseException:
            journal.close()
            raise
        return journal

    def _recover(self, journal: Journal) -> None:
        """Put the spool's lines back into ``journal`` (held: nobody else writes either)."""
        spool = self.spool
        if not spool.pending():
            return
        taken = spool.take()
        if taken is None:
            return
        try:
            lines = [e["line"] for e in taken.entries if isinstance(e.get("line"), dict)]
            for line in lines:  # known first: this run never sends them, written or not
                journal.absorb(line)
            try:
                for line in lines:
                    journal.write(line)
            except OSError as exc:
                raise StoreError(
                    f"cannot write the journal {self.path}: {exc.strerror or exc}; the "
                    f"{len(lines)} result(s) kept in the spool {spool.path} stay there. Free the "
                    "space (or fix the disk), then run again"
                ) from None
            taken.finish([])
        finally:
            taken.release()
        logger.warning(
            "journal %s: put %d result(s) from the spool %s back", self.path, len(lines), spool.path
        )

    async def generated(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` the journal (or its spool) has a generation for."""
        if not await anyio.Path(self.path).exists() and not self.spool.pending():
            return set()
        journal = await anyio.to_thread.run_sync(self._open)
        try:
            return {i for i in ids if journal.resumable(i) is not None}
        finally:
            journal.close()


class JsonlSession:
    """A run's hold on a JSONL journal (the file lock)."""

    lease = math.inf

    def __init__(self, journal: Journal, spool: Spool) -> None:
        self.journal = journal
        self.spool = spool

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
        entry = result.to_record(status=status)
        try:
            self.journal.write(entry)
        except OSError as exc:
            where = await anyio.to_thread.run_sync(self._keep, entry)
            what = f"job {result.id!r}" if result.id is not None else "a job"
            raise StoreError(
                f"cannot write the journal {self.journal.path}: {exc.strerror or exc}; the "
                f"result of {what} is kept in {where}. Free the space (or fix the disk), then "
                "run again: the next run puts it back into the journal"
            ) from None

    def _keep(self, entry: dict[str, object]) -> str:
        """Append ``entry`` to the spool; where it is kept."""
        kept = {"spool": 1, "journal": self.journal.path, "at": round(time.time(), 3)}
        try:
            self.spool.append([{**kept, "line": entry}])
        except OSError:
            # The log is the last place left: never drop a paid result silently.
            logger.error("unjournaled result (put it back by hand): %s", json.dumps(entry))  # noqa: TRY400 - the entry is what matters, not a traceback
            return "the log (nanobanana_async logger, ERROR)"
        return f"the spool {self.spool.path}"

    async def release(self, job_id: str) -> None:
        return None

    async def claim(self, limit: int) -> list[StoredJob]:
        return []

    async def maintain(self) -> None:
        return None

    async def close(self) -> None:
        self.journal.close()
