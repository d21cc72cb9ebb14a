"""The JSONL batch journal: one line per finished job, and resuming from it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

import attrs

from ..errors import InvalidRequestError
from ..models import Job
from .digests import DigestSet

__all__ = ["JobIds", "Journal", "JournalRecord", "journal_line"]

logger = logging.getLogger("nanobanana_async")


def content_id(job: Job) -> str:
    """A stable id from the fields that define what a job generates."""
    key = json.dumps([job.prompt, job.model, job.image_size, job.num], ensure_ascii=False)
    return "j" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class JobIds:
    """Assigns each job of a batch its id: ``Job.id``, else a content hash plus occurrence.

    The occurrence number makes two equal prompts two jobs (``j…`` then ``j…-2``), and keeps
    the ids stable when the same input is run again. Ids seen are kept as 8-byte digests
    (:class:`DigestSet`), counts only for repeated jobs, so a million jobs cost about 16 MiB;
    the batch runner only keeps it when a journal or a download directory needs ids.
    """

    def __init__(self) -> None:
        self._seen = DigestSet()
        self._repeats: dict[str, int] = {}

    def assign(self, job: Job) -> str:
        if job.id is not None:
            if not self._seen.add(job.id):
                raise InvalidRequestError(
                    f"duplicate job id {job.id!r}: ids name results in journals and files, "
                    "so they must be unique within a batch",
                    param="id",
                )
            return job.id
        base = content_id(job)
        if self._seen.add(base):
            return base
        count = self._repeats.get(base, 1) + 1
        self._repeats[base] = count
        return f"{base}-{count}"


@attrs.frozen
class JournalRecord:
    """What an earlier run recorded for a job id: the job's fields, and what it got."""

    id: str
    status: str
    urls: tuple[str, ...]
    credits: int
    attempts: int
    paths: tuple[str, ...]
    prompt: str | None = None
    model: str | None = None
    image_size: str | None = None
    num: int | None = None

    @property
    def generated(self) -> bool:
        """Images were generated (and paid for) even if the job did not fully succeed."""
        return bool(self.urls)

    def mismatch(self, job: Job) -> list[str]:
        """The fields of ``job`` that differ from the ones journaled under its id."""
        journaled = {
            "prompt": self.prompt,
            "model": self.model,
            "image_size": self.image_size,
            "num": self.num,
        }
        return [name for name, value in journaled.items() if value != getattr(job, name)]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _record(data: Mapping[str, Any]) -> JournalRecord | None:
    job_id, status, urls = data.get("id"), data.get("status"), data.get("urls") or []
    if not isinstance(job_id, str) or not isinstance(status, str) or not isinstance(urls, list):
        return None
    paths = data.get("paths") or []
    credits, attempts, num = data.get("credits"), data.get("attempts"), data.get("num")
    return JournalRecord(
        id=job_id,
        status=status,
        urls=tuple(u for u in urls if isinstance(u, str)),
        credits=credits if isinstance(credits, int) else 0,
        attempts=attempts if isinstance(attempts, int) else 0,
        paths=tuple(p for p in paths if isinstance(p, str)) if isinstance(paths, list) else (),
        prompt=_text(data.get("prompt")),
        model=_text(data.get("model")),
        image_size=_text(data.get("image_size")),
        num=num if isinstance(num, int) and not isinstance(num, bool) else None,
    )


def journal_line(entry: Mapping[str, Any]) -> bytes:
    """One JSON line for ``entry``, whatever text it holds.

    Text a server sent can hold lone surrogates, which UTF-8 cannot encode: such an entry is
    written with JSON's ASCII escapes instead, which read back as the same text.
    """
    text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


# A job's line starts with its id (``JobResult.to_record``): enough of a torn line to say whose.
_TORN_ID = re.compile(rb'\A\{"id":("(?:[^"\\]|\\.)*")(?:[,}]|\Z)')

TORN = (
    "an earlier run stopped while writing its journal line (a full disk, a crash), so it may "
    "have been charged"
)
# Why a job with an "ambiguous" line is not sent again, in every store: its request left and
# no answer was read (lost, or the run stopped while sending it).
UNSETTLED = (
    "an earlier run lost its answer or stopped while sending it, so it may have been charged"
)


def _torn_id(line: bytes) -> str | None:
    """The job id a line that does not parse starts with, if all of it is there."""
    found = _TORN_ID.match(line)
    if found is None:
        return None
    try:
        job_id = json.loads(found.group(1))
    except ValueError:
        return None
    return job_id if isinstance(job_id, str) else None


class Journal:
    """Append-only JSONL file of finished jobs, held by one run at a time.

    Each line is written whole with unbuffered writes, so a killed process loses at most the
    jobs that had not finished. A line that does not parse (torn by a full disk or a crash)
    but names its job makes that job *ambiguous* on the next open, as does an explicit
    ``"status": "ambiguous"`` line (a job whose answer was lost, or that was stopped while it
    was being sent): it may have been charged, so a rerun does not send it again. After a
    failed write the journal refuses further writes: a line appended to a torn one would be
    lost with it. The file is locked (an OS advisory lock) while open: a second run on the
    same journal, in this process or another, would otherwise pay for every job again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.done: dict[str, JournalRecord] = {}
        self.ambiguous: dict[str, str] = {}  # job id -> why it may have been charged
        self.failed: OSError | None = None  # the write that failed; later ones are refused
        try:
            self._fh: IO[bytes] = open(self.path, "a+b")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot open journal {self.path!r}: {exc.strerror}", param="journal"
            ) from None
        try:
            self._lock()
            needs_newline = self._load()
        except BaseException:
            self._fh.close()
            raise
        if needs_newline:
            try:
                self._append(b"\n")
            except OSError as exc:
                self._fh.close()
                raise InvalidRequestError(
                    f"cannot write journal {self.path!r}: {exc.strerror or exc}", param="journal"
                ) from None

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidRequestError(
                f"journal {self.path!r} is in use by another run (in this process or another): "
                "let that run finish, or give this one its own journal",
                param="journal",
            ) from None
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot lock journal {self.path!r}: {exc.strerror}", param="journal"
            ) from None

    def _load(self) -> bool:
        """Read earlier records; True when the file ends in a torn line."""
        try:
            self._fh.seek(0)
            data = self._fh.read()
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot read journal {self.path!r}: {exc.strerror}", param="journal"
            ) from None
        lines = data.split(b"\n")
        torn = bool(lines) and lines[-1] != b""
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
                record = _record(parsed) if isinstance(parsed, dict) else None
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                parsed, record = None, None
            if isinstance(parsed, dict) and "id" in parsed and parsed["id"] is None:
                # Our own line for an input that never became a valid job (an empty prompt, a
                # duplicate id): nothing to resume, and nothing wrong with the file.
                continue
            if record is None:
                job_id = _torn_id(line)
                if job_id is not None:
                    self.ambiguous.setdefault(job_id, TORN)
                    logger.warning(
                        "journal %s: line %d (job %r) is torn; the job may have been charged",
                        self.path,
                        number,
                        job_id,
                    )
                elif not (torn and number == len(lines)):
                    logger.warning(
                        "journal %s: line %d is not a job record; ignored", self.path, number
                    )
                continue
            self._take(record)
        return torn

    def _take(self, record: JournalRecord) -> None:
        if record.status == "ambiguous":
            self.ambiguous.setdefault(record.id, UNSETTLED)
            return
        # A later line for the same id wins, but a generated job is never forgotten: a later
        # failure (say, of a re-download) must not make the next run pay for it again.
        previous = self.done.get(record.id)
        if previous is None or record.generated or not previous.generated:
            self.done[record.id] = record

    def absorb(self, entry: Mapping[str, Any]) -> None:
        """Know ``entry`` (a job's line, from elsewhere than the file: the spool) as if it had
        been read from the file."""
        record = _record(entry)
        if record is not None:
            self._take(record)

    def resumable(self, job_id: str) -> JournalRecord | None:
        """The record of ``job_id`` if an earlier run generated it."""
        record = self.done.get(job_id)
        return record if record is not None and record.generated else None

    def unsure(self, job_id: str) -> str | None:
        """Why ``job_id`` may have been charged without a record of its answer, if it may."""
        return self.ambiguous.get(job_id) if self.resumable(job_id) is None else None

    def write(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` as one line. Raises ``OSError`` (a full disk, an I/O error) when it
        fails, leaving at most a torn line, and again for every later write."""
        if self.failed is not None:
            raise self.failed
        try:
            self._append(journal_line(entry))
        except OSError as exc:
            self.failed = exc
            raise

    def _append(self, data: bytes) -> None:
        # Unbuffered: a failed write leaves nothing in a buffer to be written later, after
        # (and glued to) a line that was torn.
        view = memoryview(data)
        fd = self._fh.fileno()
        while view:
            view = view[os.write(fd, view) :]

    def close(self) -> None:
        """Close the file, which releases the lock."""
        self._fh.close()
