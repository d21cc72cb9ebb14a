"""The job store protocol: where a batch records its jobs, and where workers find theirs.

A store is what ``journal=`` names. :class:`JobStore` is the user's object (a path or a
URL, and what can be asked of it without running anything); :meth:`JobStore.connect` opens
a :class:`StoreSession`, one run's view: the runner calls it before and after each job.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Final, Literal, Protocol

import attrs

from ...errors import NanoBananaError
from ...models import Job
from ..journal import JournalRecord
from ..results import JobResult

__all__ = [
    "FINAL_STATES",
    "STATES",
    "Begin",
    "JobStore",
    "State",
    "StoreError",
    "StoreSession",
    "StoreStatus",
    "StoreUnavailableError",
    "StoredJob",
    "new_owner",
    "owner_is_dead",
]

State = Literal["pending", "claimed", "sending", "done", "failed", "skipped", "ambiguous"]
STATES: Final[tuple[State, ...]] = (
    "pending",
    "claimed",
    "sending",
    "done",
    "failed",
    "skipped",
    "ambiguous",
)
FINAL_STATES: Final[tuple[State, ...]] = ("done", "failed", "skipped", "ambiguous")


class StoreError(NanoBananaError):
    """A job store could not be opened, read or written (the message names it, never a
    password). A batch stops rather than send a job it could not record."""


class StoreUnavailableError(StoreError):
    """The job store did not answer for its whole ``retry_window`` (it is down, restarting
    for longer than that, or unreachable).

    The run that meets it stops taking jobs, settles the jobs in flight (their results go to
    the store's local spool, which the next run or ``nanobanana jobs recover`` puts back) and
    then raises it: one line saying which store, for how long, and where the spool is.
    """


@attrs.frozen
class Begin:
    """What a store says about a job a batch is about to run.

    ``record``: an earlier run generated it (resume, never pay again). ``skip``: not to be
    sent now, and why (it is ambiguous, or another worker holds it). Otherwise the job is
    this run's to send, with ``idempotency_key`` (stores that keep one per job).
    """

    record: JournalRecord | None = None
    skip: str | None = None
    idempotency_key: str | None = None


@attrs.frozen
class StoredJob:
    """A job a worker claimed from a store."""

    id: str
    index: int
    prompt: str
    model: str
    image_size: str
    num: int
    idempotency_key: str


@attrs.frozen
class StoreStatus:
    """Jobs by state and credits, as a store sees them (``nanobanana jobs status``).

    ``credits_spent`` adds up what done jobs were charged; ``credits_may_have_been_spent``
    what jobs being sent and ambiguous jobs reserved plus attempts whose answer was lost: the
    server may or may not have charged those. ``ambiguous`` lists the first ambiguous job ids.
    ``spooled``: results in this machine's spool for the store, not in it yet (``nanobanana
    jobs recover`` puts them in).
    """

    counts: Mapping[str, int]
    credits_spent: int
    credits_may_have_been_spent: int
    ambiguous: tuple[str, ...] = ()
    spooled: int = 0

    @property
    def total(self) -> int:
        """Jobs in the store."""
        return sum(self.counts.values())

    @property
    def unfinished(self) -> int:
        """Jobs not in a final state (pending, claimed or sending)."""
        return self.total - sum(self.counts.get(s, 0) for s in FINAL_STATES)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return {
            "counts": {state: self.counts.get(state, 0) for state in STATES},
            "total": self.total,
            "credits_spent": self.credits_spent,
            "credits_may_have_been_spent": self.credits_may_have_been_spent,
            "ambiguous": list(self.ambiguous),
            "spooled": self.spooled,
        }


class StoreSession(Protocol):
    """One run's connection to a store: what the batch runner calls around each job.

    Every write is awaited before the runner goes on (a job is recorded ``sending`` before
    its request leaves, and its result before the result is yielded) and shielded from
    cancellation, so the caller always knows what the store holds.
    """

    async def begin(self, job_id: str, index: int, job: Job) -> Begin:
        """Take ``job`` for this run (batch mode), or say why not."""
        ...

    async def sending(
        self, job_id: str, idempotency_key: str | None, credits: int, *, uncertain: int = 0
    ) -> bool:
        """Record that ``job_id`` is about to be sent, reserving ``credits``; False when this
        run no longer holds it (its lease expired and another worker took it): do not send.

        Called again before each later attempt whose predecessor may have been charged
        (``uncertain``: what this job's attempts so far may have cost), so a kill at any
        point leaves every possibly charged attempt counted in the store."""
        ...

    async def record(self, result: JobResult, *, status: str | None = None) -> None:
        """Record a job's result (``status="generated"``: its answer was read, the files are
        still to come). A store that cannot take it keeps it elsewhere if it can (its
        spool) and raises :class:`StoreError` when the run must stop. A job cancelled after
        its request left is recorded so too: failed, with what it may have cost."""
        ...

    async def release(self, job_id: str) -> None:
        """Give back a job this run took and never sent."""
        ...

    async def claim(self, limit: int) -> list[StoredJob]:
        """Claim up to ``limit`` pending jobs (workers); empty when none is pending."""
        ...

    async def maintain(self) -> None:
        """Renew this run's leases and hand back other runs' expired ones."""
        ...

    @property
    def lease(self) -> float:
        """Seconds a claim lasts without a heartbeat."""
        ...

    async def close(self) -> None:
        """Give back what this run holds and has not sent, and close."""
        ...


class JobStore(Protocol):
    """What ``journal=`` takes besides a path or URL: a JSONL journal, SQLite or Postgres."""

    @property
    def url(self) -> str:
        """Where the store is (a path or a URL without its password)."""
        ...

    async def connect(self, *, worker: bool = False) -> StoreSession:
        """Open a session for one run (``worker``: jobs come from the store's pending rows)."""
        ...

    async def generated(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` an earlier run generated (a rerun will not pay for them)."""
        ...


# -- owners ----------------------------------------------------------------------------------


def _host_key() -> str:
    """This machine and PID namespace, so a worker can tell another process here is gone.

    Two processes see each other's PIDs only with the same boot and PID namespace; the host
    name alone would confuse containers that share one.
    """
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path) as fh:
                parts.append(fh.read().strip())
        except OSError:
            return ""
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        return ""
    return uuid.uuid5(uuid.NAMESPACE_OID, "/".join(parts)).hex[:12]


_HOST = _host_key()


def new_owner() -> str:
    """A lease owner name for one run: ``host:pid:token``."""
    return f"{_HOST or 'unknown'}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this machine and its process is gone.

    An owner elsewhere, or a PID that is alive (even reused), is left to its lease: a
    wrong "alive" only waits longer, it never hands out a job twice.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if not _HOST or host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    # The state follows the parenthesised command name; Z is a zombie (killed, not reaped).
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
