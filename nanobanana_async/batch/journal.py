"""The JSONL batch journal: one line per finished job, and resuming from it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import IO, Any

import attrs

from ..errors import InvalidRequestError
from ..models import Job

__all__ = ["JobIds", "Journal", "JournalRecord"]

logger = logging.getLogger("nanobanana_async")


def content_id(job: Job) -> str:
    """A stable id from the fields that define what a job generates."""
    key = json.dumps([job.prompt, job.model, job.image_size, job.num], ensure_ascii=False)
    return "j" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class JobIds:
    """Assigns each job of a batch its id: ``Job.id``, else a content hash plus occurrence.

    The occurrence number makes two equal prompts two jobs (``j…`` then ``j…-2``), and keeps
    the ids stable when the same input is run again. It costs one dict entry per distinct job,
    which is why the batch runner only keeps it when a journal or a download directory needs ids.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def assign(self, job: Job) -> str:
        if job.id is not None:
            if job.id in self._seen:
                raise InvalidRequestError(
                    f"duplicate job id {job.id!r}: ids name results in journals and files, "
                    "so they must be unique within a batch",
                    param="id",
                )
            self._seen[job.id] = 1
            return job.id
        base = content_id(job)
        count = self._seen.get(base, 0) + 1
        self._seen[base] = count
        return base if count == 1 else f"{base}-{count}"


@attrs.frozen
class JournalRecord:
    """What an earlier run recorded for a job id."""

    id: str
    status: str
    urls: tuple[str, ...]
    credits: int
    attempts: int
    paths: tuple[str, ...]

    @property
    def generated(self) -> bool:
        """Images were generated (and paid for) even if the job did not fully succeed."""
        return bool(self.urls)


def _record(data: Mapping[str, Any]) -> JournalRecord | None:
    job_id, status, urls = data.get("id"), data.get("status"), data.get("urls") or []
    if not isinstance(job_id, str) or not isinstance(status, str) or not isinstance(urls, list):
        return None
    paths = data.get("paths") or []
    credits, attempts = data.get("credits"), data.get("attempts")
    return JournalRecord(
        id=job_id,
        status=status,
        urls=tuple(u for u in urls if isinstance(u, str)),
        credits=credits if isinstance(credits, int) else 0,
        attempts=attempts if isinstance(attempts, int) else 0,
        paths=tuple(p for p in paths if isinstance(p, str)) if isinstance(paths, list) else (),
    )


class Journal:
    """Append-only JSONL file of finished jobs.

    Each line is written with one ``write`` and flushed at once, so a killed process loses at
    most the jobs that had not finished; a torn last line is skipped on the next open.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.done: dict[str, JournalRecord] = {}
        needs_newline = self._load()
        try:
            self._fh: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot open journal {self.path!r}: {exc.strerror}", param="journal"
            ) from None
        if needs_newline:
            self._fh.write(b"\n")
            self._fh.flush()

    def _load(self) -> bool:
        """Read earlier records; True when the file ends in a torn line."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return False
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
            except ValueError:
                parsed, record = None, None
            if isinstance(parsed, dict) and "id" in parsed and parsed["id"] is None:
                # Our own line for an input that never became a valid job (an empty prompt, a
                # duplicate id): nothing to resume, and nothing wrong with the file.
                continue
            if record is None:
                if not (torn and number == len(lines)):
                    logger.warning(
                        "journal %s: line %d is not a job record; ignored", self.path, number
                    )
                continue
            # A later line for the same id wins, but a generated job is never forgotten: a later
            # failure (say, of a re-download) must not make the next run pay for it again.
            previous = self.done.get(record.id)
            if previous is None or record.generated or not previous.generated:
                self.done[record.id] = record
        if torn:
            logger.info("journal %s: ignoring a torn last line (an interrupted run)", self.path)
        return torn

    def resumable(self, job_id: str) -> JournalRecord | None:
        """The record of ``job_id`` if an earlier run generated it."""
        record = self.done.get(job_id)
        return record if record is not None and record.generated else None

    def write(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._fh.write(line.encode())
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
