"""The spool: results a store could not take, kept in a local append-only file.

A result that could not be written to the store (it stayed down for its whole retry window)
is appended here as one JSON line, flushed and fsynced, before the run goes on: a paid
generation is never only in memory. The next run or worker on the store puts the spool back
into it when it opens (``SqlStore.recover``), and so does ``nanobanana jobs recover``.

Where: ``spool_dir`` of the store, by default ``$XDG_STATE_HOME/nanobanana/spool`` (that is
``~/.local/state/nanobanana/spool`` when ``XDG_STATE_HOME`` is unset), in a file named by the
store's id and queue (``<store id>-<queue>.jsonl``), so every URL that reaches one database
(directly, or through pgbouncer) finds the same file. Writers and the recovery take an
exclusive lock on the file (an OS advisory lock), so several processes on one machine share
it safely. A JSONL journal keeps the lines it could not write (a full disk) in a spool of its
own in the same directory (``jsonl.py``), put back by the next run on that journal.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

from ..journal import journal_line

__all__ = ["Spool", "Taken", "default_spool_dir"]

logger = logging.getLogger("nanobanana_async")


def default_spool_dir() -> pathlib.Path:
    """``$XDG_STATE_HOME/nanobanana/spool``, else ``~/.local/state/nanobanana/spool``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return pathlib.Path(state) / "nanobanana" / "spool"


class Taken:
    """A spool's entries, held under its lock until :meth:`finish` or :meth:`release`."""

    def __init__(self, fd: int, path: pathlib.Path, entries: list[dict[str, Any]]) -> None:
        self._fd = fd
        self.path = path
        self.entries = entries

    def finish(self, kept: list[dict[str, Any]]) -> None:
        """Leave only ``kept`` in the spool (the others are in the store now), and unlock."""
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            if kept:
                _write_all(self._fd, b"".join(journal_line(e) for e in kept))
            os.fsync(self._fd)
        finally:
            self.release()

    def release(self) -> None:
        """Unlock, leaving the spool as it was."""
        if self._fd >= 0:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = -1


class Spool:
    """The spool file at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append ``entries`` (one line each) and fsync them, under the lock. Raises OSError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, b"".join(journal_line(e) for e in entries))
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> bool:
        """True when the spool holds something (a cheap check before opening it)."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def count(self) -> int:
        """Entries in the spool (lines), without taking the lock."""
        if not self.pending():
            return 0
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        except OSError:
            return 0

    def take(self) -> Taken | None:
        """The entries under the lock; None when another process holds it (it is recovering
        the same spool) or there is no spool."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return Taken(fd, self.path, self._parse(data))

    def _parse(self, data: bytes) -> list[dict[str, Any]]:
        entries = []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and entry.get("spool") == 1:
                entries.append(entry)
            else:
                # A line cut short by a crash while it was written: its result never made it.
                logger.warning("spool %s: line %d is no spooled result; dropped", self.path, number)
        return entries


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
