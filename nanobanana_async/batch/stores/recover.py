"""Putting the spool back into the store: each spooled write, applied if it still applies.

A spooled write is what a run could not record: a generation (``done``), a job's end without
one (``finish``: failed, skipped or ambiguous) or the files of a done job (``files``). Since
then the row may have moved on (the reaper made it ambiguous, an operator retried it, another
worker sent it again), so each is applied by looking at the row first, in one transaction
for each entry:

- ``done``: the row becomes done with the spooled result, unless another worker holds it
  right now (the entry stays in the spool for the next recovery) or it is done already (the
  same URLs: nothing to do; others: the job was generated twice, and the spooled credits are
  added to what may have been spent). An ambiguous row another worker left keeps that
  worker's reservation as may-have-been-spent.
- ``finish``: applied to a row this run still held; elsewhere only its may-have-been-spent
  credits are added to the row.
- ``files``: applied to a done row.

A row missing altogether (the table was emptied) is added back from the spooled job first.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .sql import Statements

__all__ = ["Recovered", "apply_spooled"]


@attrs.frozen
class Recovered:
    """What a recovery did: ``applied`` spooled writes are in the store now; ``kept`` stay
    in the spool for a later recovery (their job is held by a worker right now), as do
    ``refused`` ones (the store refused them: see the log) and ``foreign`` ones (another
    store's or queue's)."""

    path: str
    applied: int = 0
    kept: int = 0
    refused: int = 0
    foreign: int = 0

    @property
    def total(self) -> int:
        """Entries the spool held."""
        return self.applied + self.kept + self.refused + self.foreign

    @property
    def left(self) -> int:
        """Entries still in the spool."""
        return self.total - self.applied


Execute = Callable[[str, dict[str, Any]], Any]


def _row(execute: Execute, sql: Statements, entry: dict[str, Any]) -> Sequence[Any]:
    job = entry["job"]
    row = execute(sql.lock_row, {"id": job["id"]}).fetchone()
    if row is not None:
        return tuple(row)
    base = execute(sql.next_index, {}).fetchone()[0]
    params = {
        "id": job["id"],
        "idx": base,
        "prompt": job["prompt"],
        "model": job["model"],
        "image_size": job["image_size"],
        "num": job["num"],
        "key": uuid.uuid4().hex,
    }
    execute(sql.add, params)
    return ("pending", None, 0, None)


def _apply(execute: Execute, sql: Statements, entry: dict[str, Any]) -> bool:
    """Apply one spooled write; False when it must stay in the spool."""
    state, owner, reserved, urls = _row(execute, sql, entry)
    mine = owner == entry["owner"]
    params = dict(entry["params"], id=entry["job"]["id"])
    op = entry["op"]
    if op == "done":
        if state == "done":
            if json.loads(urls or "[]") != json.loads(params["urls"]):
                extra = int(params["credits"]) + int(params["uncertain"])
                execute(sql.add_uncertain, {"id": params["id"], "uncertain": extra})
            return True
        if state in ("claimed", "sending") and not mine:
            return False
        if state == "ambiguous" and not mine:
            params["uncertain"] = int(params["uncertain"]) + int(reserved)
        execute(sql.recover_done, params)
    elif op == "finish":
        if state in ("claimed", "sending", "ambiguous") and mine:
            execute(sql.recover_finish, params)
        elif int(params["uncertain"]):
            execute(sql.add_uncertain, {"id": params["id"], "uncertain": params["uncertain"]})
    elif op == "files" and state == "done":
        execute(sql.files, params)
    return True


def apply_spooled(execute: Execute, sql: Statements, store_id: str, entry: dict[str, Any]) -> str:
    """Apply one spooled write (inside the caller's transaction): ``"applied"``,
    ``"kept"`` (its job is held by a worker: later) or ``"foreign"`` (another store's or
    queue's)."""
    if entry.get("store_id") != store_id or entry.get("queue") != sql.queue:
        return "foreign"
    return "applied" if _apply(execute, sql, entry) else "kept"
