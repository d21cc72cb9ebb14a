"""A set of strings kept as 64-bit digests: a million members in about 16 MiB.

The batch runner remembers every job id of a run (to number repeated prompts and refuse
duplicate ids) and every file name; as Python strings in a ``set`` that is over 100 MiB at a
million jobs. Two different strings share a digest with odds of about 1 in 30 million at
a million members, and the outcome is deterministic (the same input gives the same ids).
"""

from __future__ import annotations

import hashlib
from array import array

__all__ = ["DigestSet"]


def _digest(text: str) -> int:
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little") or 1  # 0 marks an empty slot


class DigestSet:
    """Membership of strings by their 64-bit BLAKE2b digest (open addressing, no deletes)."""

    __slots__ = ("_count", "_mask", "_slots")

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._mask = 1023
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _find(self, digest: int) -> int:
        slots, mask = self._slots, self._mask
        i = digest & mask
        while True:
            value = slots[i]
            if value == 0 or value == digest:
                return i
            i = (i + 1) & mask

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        digest = _digest(text)
        return self._slots[self._find(digest)] == digest

    def add(self, text: str) -> bool:
        """Add ``text``; False if it was already a member."""
        digest = _digest(text)
        i = self._find(digest)
        if self._slots[i] == digest:
            return False
        self._slots[i] = digest
        self._count += 1
        if self._count * 2 > self._mask:
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(8 * len(old) * 2))
        self._mask = len(self._slots) - 1
        for digest in old:
            if digest:
                self._slots[self._find(digest)] = digest
