"""Sections of docs/benchmarks.md: each part of the suite rewrites its own, keeps the others.

A section starts at its ``## `` heading (the first line of the section's text) and runs to the
next ``## `` heading or the end. ``python -m benchmarks --telemetry`` (``--stores``,
``--limits``) replaces only its section; a full run writes the document anew and carries over
the sections it did not measure.
"""

from __future__ import annotations

__all__ = ["replace_section", "section_of"]


def _bounds(lines: list[str], heading: str) -> tuple[int, int] | None:
    if heading not in lines:
        return None
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def section_of(document: str, heading: str) -> str | None:
    """The section of ``document`` under ``heading`` (``"## Job stores"``), if it has one."""
    lines = document.splitlines()
    bounds = _bounds(lines, heading)
    if bounds is None:
        return None
    return "\n".join(lines[bounds[0] : bounds[1]]).rstrip("\n") + "\n"


def replace_section(document: str, section: str, *, before: str | None = None) -> str:
    """``document`` with the section headed like ``section`` replaced by it.

    A document without that section gets it before the ``before`` heading when there is one,
    else at the end.
    """
    lines = document.splitlines()
    new = [*section.rstrip("\n").splitlines(), ""]
    bounds = _bounds(lines, new[0])
    if bounds is not None:
        lines[bounds[0] : bounds[1]] = new
    elif before is not None and before in lines:
        at = lines.index(before)
        lines[at:at] = new
    else:
        if lines and lines[-1].strip():
            lines.append("")
        lines += new
    return "\n".join(lines).rstrip("\n") + "\n"
