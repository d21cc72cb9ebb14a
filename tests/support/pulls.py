"""A lazy job input that counts what the batch pulled from it and whether it was closed."""

from __future__ import annotations

from collections.abc import Iterator

import attrs


@attrs.define
class Pulls:
    """How many items a job generator has handed out, and whether it was closed."""

    pulled: int = 0
    closed: bool = False


def prompts(n: int, pulls: Pulls, prefix: str = "prompt") -> Iterator[str]:
    """``n`` prompts, made one at a time as the batch pulls them."""
    try:
        for i in range(n):
            pulls.pulled += 1
            yield f"{prefix} {i}"
    finally:
        pulls.closed = True
