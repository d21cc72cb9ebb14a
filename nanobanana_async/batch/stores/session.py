"""One run's session on a SQL store: its lease owner name, connections and writes.

Writes go through group commit (``group.py``) on the session's pool (``pool.py``), which
retries them on new connections while the store is briefly away. A result the store still
cannot take is appended to the store's spool (``spool.py``) before the session says so: a
paid generation is never only in memory. The spool is put back into the store when a
session opens.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import anyio
import anyio.to_thread

from ...models import Job
from ..journal import UNSETTLED
from ..results import JobResult
from .backend import SqlBackend
from .base import Begin, StoredJob, StoreError, StoreUnavailableError, new_owner, owner_is_dead
from .group import GroupCommit, Op
from .sql import clean_text, json_list, record_of, row_dict

__all__ = ["SqlSession"]

logger = logging.getLogger("nanobanana_async")

# How often a job held by another run is looked at again (wait_for_lease), at most.
_MAX_POLL = 1.0


class SqlSession:
    """One run's session on a SQL store (:class:`~.sqlstore.SqlStore`)."""

    def __init__(self, store: SqlBackend, *, worker: bool) -> None:
        self.store = store
        self.worker = worker
        self.owner = new_owner()
        self.lease = store.lease
        self._sql = store.statements
        self._pool = store._pool(store.connections, run=True)
        self._group = GroupCommit(self._apply, store.writers)
        self._generated: set[str] = set()
        # Credits a job's row already counts as may-have-been-spent from this run's attempts
        # (written before each retry of an attempt whose answer was lost).
        self._told: dict[str, int] = {}
        self.spooled = 0  # results this session kept in the spool
        self._held: set[str] = set()  # jobs claimed and handed out, not finished yet
        # Batch mode: jobs this run took and has not written yet (``begin``), by id.
        self._taken: dict[str, dict[str, Any]] = {}
        self._empty = False  # the queue had no row when the session opened (batch mode)
        self._tidy_due = False  # the store's upkeep is due (``_tidy``)
        self._reap_due = 0.0  # monotonic time of the next reap while jobs wait for a lease

    async def open(self) -> None:
        await self._pool.open()
        await self.maintain()
        await self._put_back_spool()
        if not self.worker:  # after the spool: what it put back is there to resume
            sql = self._sql.queue_empty
            self._empty = bool(
                await self._pool.run(lambda conn: self.store._execute(conn, sql, {}).fetchone()[0])
            )

    async def _put_back_spool(self) -> None:
        try:
            recovered = await self.store._recover(self._pool)
        except StoreUnavailableError:
            raise
        except StoreError as exc:
            logger.warning(
                "job store %s: the spool was not put back (%s); it stays for the next run or "
                "nanobanana jobs recover",
                self.store.url,
                exc,
            )
            return
        if recovered.total:
            logger.warning(
                "job store %s: put %d spooled result(s) from %s back into the store (%d left "
                "there)",
                self.store.url,
                recovered.applied,
                recovered.path,
                recovered.left,
            )

    async def _apply(self, ops: list[Op]) -> None:
        try:
            await self._pool.run(self.store._transaction, ops, here=True)
            self._tidy_due = self.store._committed(len(ops)) or self._tidy_due
        except StoreUnavailableError:
            raise
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
        result = await self._group.submit(Op([(sql, params)], want))
        if self._tidy_due:
            await self._tidy()
        return result

    async def _tidy(self) -> None:
        """The store's upkeep (SQLite's WAL checkpoint), run by the caller whose write was
        decided when it fell due: not by the commit, which would hold every waiting write
        back meanwhile (a checkpoint syncs the database file). Its write is done: a failure
        here is only logged, and cancellation waits for it."""
        self._tidy_due = False
        with anyio.CancelScope(shield=True):
            try:
                await self.store._tidy(self._pool)
            except StoreError as exc:
                logger.debug(
                    "job store %s: upkeep failed (tried again later): %s", self.store.url, exc
                )

    # -- batch mode -------------------------------------------------------------------------

    async def begin(self, job_id: str, index: int, job: Job) -> Begin:
        """Take ``job`` for this run, or say why not: a read, no write.

        The row is written when the job is first recorded (``sending`` before its request
        leaves, or its end if it is never sent): a job taken and never sent leaves nothing
        behind, as a claim given back would. Another run that takes the same job meanwhile
        wins: this run's ``sending`` then finds the row held and does not send. In a queue
        that was empty when this session opened there is nothing to read (until a write
        finds a row this run did not know of). With ``wait_for_lease`` the job is claimed
        here instead (``_claim``).
        """
        if self.store.wait_for_lease:
            return await self._claim(job_id, index, job)
        key = uuid.uuid4().hex
        if not self._empty:
            op = Op([(self._sql.row, {"id": job_id})], "row")
            row = await self._group.submit(op)
            if row is not None:
                data = row_dict(row)
                ended = _settled(data)
                if ended is not None:
                    return ended
                if data["state"] not in ("pending", "failed", "skipped"):
                    return Begin(skip=_held(data))
                if (data["prompt"], data["model"], data["image_size"], data["num"]) == (
                    job.prompt,
                    job.model,
                    job.image_size,
                    job.num,
                ):
                    key = data["idempotency_key"]  # a resend the server may recognise
        self._taken[job_id] = _row_of(job_id, index, job, key)
        return Begin(idempotency_key=key)

    async def _claim(self, job_id: str, index: int, job: Job) -> Begin:
        """``begin`` with ``wait_for_lease``: the job is claimed now, in one statement, so
        that runs sharing jobs at the same time see each other's claims and wait for them
        (a row written only at "sending" would let another run take it in between, and this
        one would have to give it up instead of waiting)."""
        params = {
            **_row_of(job_id, index, job, uuid.uuid4().hex),
            "owner": self.owner,
            "lease": self.lease,
        }
        op = Op([(self._sql.begin, params), (self._sql.row, {"id": job_id})], "row")
        row = await self._group.submit(op)
        data = row_dict(row)
        if data["state"] == "claimed" and data["lease_owner"] == self.owner:
            return Begin(idempotency_key=data["idempotency_key"])
        ended = _settled(data)
        if ended is not None:
            return ended
        # Its holder may be gone (a killed process elsewhere, whose lease has to run out):
        # hand back expired leases now and then while jobs wait, not once per job.
        poll = min(_MAX_POLL, self.lease / 10)
        if time.monotonic() >= self._reap_due:
            self._reap_due = time.monotonic() + poll
            await self.maintain()
        return Begin(skip=_held(data), wait=poll)

    # -- a job's progress -------------------------------------------------------------------

    async def sending(
        self, job_id: str, idempotency_key: str | None, credits: int, *, uncertain: int = 0
    ) -> bool:
        told = self._told.get(job_id, 0)
        taken = self._taken.pop(job_id, None)
        if taken is not None:  # its first record: the row is written now
            params = {
                **taken,
                "key": idempotency_key or taken["key"],
                "credits": credits,
                "uncertain": uncertain - told,
                "lease": self.lease,
            }
            held = bool(await self._write(self._sql.take, params))
            if not held:
                self._empty = False  # another run writes this queue: read before taking
        else:
            params = {
                "id": job_id,
                "key": idempotency_key,
                "credits": credits,
                "uncertain": uncertain - told,
            }
            held = bool(await self._write(self._sql.sending, params))
        if held and uncertain != told:
            self._told[job_id] = uncertain
        return held

    async def record(self, result: JobResult, *, status: str | None = None) -> None:
        job_id = result.id
        if job_id is None:
            return
        # What the row does not count yet of what this job may have spent.
        uncertain = result.credits_may_have_been_spent - self._told.pop(job_id, 0)
        self._held.discard(job_id)
        generation = result.generation
        if generation is not None:
            params: dict[str, Any] = {
                "id": job_id,
                "files": json_list([str(p) for p in result.paths]),
                "error": clean_text(str(result.error)) if result.error else None,
            }
            if result.resumed or job_id in self._generated:
                self._generated.discard(job_id)
                await self._keep("files", self._sql.files, params, result)
                return
            params.update(
                urls=json_list(generation.urls),
                credits=result.credits,
                uncertain=uncertain,
                attempts=result.attempts,
            )
            if status == "generated":
                self._generated.add(job_id)
            await self._keep("done", self._sql.done, params, result)
            return
        if result.status == "skipped" and self.worker:
            # A worker skips what it cannot send now (budget, a stopped batch): another may.
            try:
                await self.release(job_id)
            except StoreUnavailableError:
                raise
            except StoreError as exc:  # its lease runs out instead: nothing is lost
                logger.warning("job %s was not given back: %s", job_id, exc)
            return
        if result.status == "skipped":
            state = "skipped"
        else:  # no answer came back after a request that may have been charged: ambiguous
            state = "ambiguous" if result.credits_may_have_been_spent else "failed"
        params = {
            "id": job_id,
            "state": state,
            "uncertain": uncertain,
            "attempts": result.attempts,
            "error": clean_text(str(result.error)) if result.error else None,
            "reason": clean_text(result.reason),
        }
        taken = self._taken.pop(job_id, None)
        if taken is not None:  # never sent: its row is written now
            params.update(taken)
            await self._keep("finish", self._sql.finish_untaken, params, result)
            return
        await self._keep("finish", self._sql.finish, params, result)

    async def _keep(self, op: str, sql: str, params: dict[str, Any], result: JobResult) -> None:
        """Write ``params`` with ``sql``; if the store cannot take it, spool it (and still
        raise when the store is down: the run must stop)."""
        try:
            await self._write(sql, params)
        except StoreError as exc:
            if result.job is not None:
                await self._spool(op, params, result)
            if isinstance(exc, StoreUnavailableError):
                raise
            logger.warning("the write of job %s was refused: %s", result.id, exc)

    async def _spool(self, op: str, params: dict[str, Any], result: JobResult) -> None:
        job = result.job
        assert job is not None
        spool = self.store.spool
        entry: dict[str, Any] = {
            "spool": 1,
            "store_id": self.store.store_id,
            "queue": self._sql.queue,
            "store": self.store.url,
            "at": round(time.time(), 3),
            "op": op,
            "owner": self.owner,
            "job": {
                "id": result.id,
                "index": result.index,
                "prompt": job.prompt,
                "model": job.model,
                "image_size": job.image_size,
                "num": job.num,
            },
            "params": {k: v for k, v in params.items() if k not in ("id", "owner")},
        }
        try:
            await anyio.to_thread.run_sync(spool.append, [entry])
        except OSError as exc:
            # The log is the last place left: never drop a paid result silently.
            logger.error("unstored result (put it back by hand): %s", json.dumps(entry))  # noqa: TRY400 - the entry is what matters, not a traceback
            raise StoreError(
                f"job store {self.store.url} could not take the result of job {result.id}, and "
                f"neither could the spool {spool.path} ({exc.strerror or exc}): the result is "
                "in the log (nanobanana_async logger, ERROR)"
            ) from None
        self.spooled += 1
        logger.warning(
            "job store %s: the result of job %s is kept in the spool %s",
            self.store.url,
            result.id,
            spool.path,
        )

    async def release(self, job_id: str) -> None:
        self._told.pop(job_id, None)
        self._held.discard(job_id)
        if self._taken.pop(job_id, None) is not None:
            return  # never written: nothing to give back
        await self._write(self._sql.release, {"id": job_id})

    # -- workers ----------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[StoredJob]:
        params = {"owner": self.owner, "lease": self.lease, "n": limit}
        retries = self._pool.retries
        rows = await self._pool.run(self.store._claim, params)
        if self._pool.retries != retries:
            # A claim may have committed and lost its answer on the way: the rows it took
            # are this run's, and would sit claimed until it ends. Found by owner.
            rows = await self._pool.run(self._claimed_by)
            rows = [r for r in rows if r[0] not in self._held]
        jobs = [StoredJob(r[0], int(r[1]), r[2], r[3], r[4], int(r[5]), r[6]) for r in rows]
        jobs.sort(key=lambda j: j.index)  # RETURNING has no order of its own
        self._held.update(job.id for job in jobs)
        return jobs

    def _claimed_by(self, conn: Any) -> list[Any]:
        return list(self.store._execute(conn, self._sql.claimed_by, {"owner": self.owner}))

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
        """Give back the jobs this run claimed and never sent. Best effort: when the store is
        down their leases run out instead, and nothing is raised."""
        with anyio.CancelScope(shield=True):
            try:
                await self._group.flush()
                await self._pool.run(
                    lambda conn: self.store._execute(conn, self._sql.close, {"owner": self.owner})
                )
            except StoreError as exc:
                logger.warning(
                    "job store %s: this run's unsent jobs were not given back (%s); they return "
                    "to pending when their lease runs out",
                    self.store.url,
                    exc,
                )
            finally:
                await self._pool.close()


def _settled(data: dict[str, Any]) -> Begin | None:
    """What a run does with a job whose row says it is settled (done: resumed; ambiguous: not
    sent again), or None."""
    if data["state"] == "done":
        return Begin(record=record_of(data))
    if data["state"] == "ambiguous":
        return Begin(
            skip=f"ambiguous: {UNSETTLED}; not sent again (nanobanana jobs retry "
            "--ambiguous sends it anyway)"
        )
    return None


def _held(data: dict[str, Any]) -> str:
    return f"held by another worker ({data['lease_owner']}): not sent by this run"


def _row_of(job_id: str, index: int, job: Job, key: str) -> dict[str, Any]:
    """A job's row as the statements that write it first take it."""
    return {
        "id": job_id,
        "idx": index,
        "prompt": job.prompt,
        "model": job.model,
        "image_size": job.image_size,
        "num": job.num,
        "key": key,
    }
