"""The SQL job stores' statements: one table, a row per job, the same SQL on SQLite and Postgres.

A job's row moves ``pending -> claimed -> sending -> done | failed | skipped``, and to
``ambiguous`` when a run stopped while it was ``sending`` or when every answer to it was lost
after a request left (it may have been charged, and no result came back). ``sending`` is
written (and awaited) before the request leaves, so a killed worker's jobs are either never
sent (``claimed``: back to ``pending``) or visible as ambiguous, never silently paid twice.
Times are seconds since the epoch on the database's clock, so leases mean the same to
every worker whatever their clocks say.

Rows belong to a queue (``queue`` column, ``"default"`` unless the store names another):
several pipelines share one database without seeing each other's jobs. The queue name is
validated (:data:`QUEUE_PATTERN`) and written into the statements as a literal, so the
statements of one store are built once and carry no extra parameter.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any, Final

import attrs

from ..journal import JournalRecord

__all__ = [
    "QUEUE_PATTERN",
    "ROW_FIELDS",
    "TABLE",
    "Dialect",
    "Statements",
    "clean_text",
    "json_list",
    "record_of",
    "row_dict",
]

TABLE: Final = "nanobanana_jobs"
_STATES = "'pending','claimed','sending','done','failed','skipped','ambiguous'"
_LEASED = "state IN ('claimed','sending')"
_COLUMNS = "id, idx, prompt, model, image_size, num"
_ROW = (
    f"{_COLUMNS}, state, lease_owner, idempotency_key, urls, credits, attempts, files, error, "
    "reason, reserved, uncertain"
)
# A job's end, with a generation (done) or without (failed, skipped, or ambiguous: no
# result, and an attempt may have been charged; an ambiguous row keeps its owner, as a
# reaped one does). The WHERE clause says whose row it may be.
_DONE = (
    "UPDATE {t} SET state = 'done', urls = %(urls)s, credits = %(credits)s, "
    "uncertain = uncertain + %(uncertain)s, attempts = %(attempts)s, files = %(files)s, "
    "error = %(error)s, reason = NULL, reserved = 0, lease_owner = NULL, lease_until = NULL, "
    "updated_at = {now}"
)
_FINISH = (
    "UPDATE {t} SET state = %(state)s, uncertain = uncertain + %(uncertain)s, "
    "attempts = %(attempts)s, error = %(error)s, reason = %(reason)s, reserved = 0, "
    "lease_owner = CASE WHEN %(state)s = 'ambiguous' THEN lease_owner ELSE NULL END, "
    "lease_until = NULL, updated_at = {now}"
)
# Letters, digits and ``_.:-``: a queue name is safe to write into SQL as a literal.
QUEUE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def clean_text(text: str | None) -> str | None:
    """Text any database takes: lone surrogates escaped, NUL spelled out."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def json_list(values: Sequence[str]) -> str:
    """A JSON array in ASCII (escapes keep odd server text storable)."""
    return json.dumps(list(values))


@attrs.frozen
class Dialect:
    """What differs between SQLite and Postgres: types, the clock, row locking, parameters."""

    name: str
    now: str
    real: str
    lock: str  # row locking that skips rows another transaction holds
    table_exists: str  # one row, one column: is there a table called %(name)s
    schema_lock: str = ""  # taken in the transaction that creates or upgrades the table
    table_suffix: str = ""
    named_params: bool = False  # SQLite's :name instead of %(name)s

    def sql(self, text: str, queue: str = "default") -> str:
        text = (
            text.replace("{t}", TABLE)
            .replace("{now}", self.now)
            .replace("{lock}", self.lock)
            .replace("{q}", f"'{queue}'")
            .replace("{real}", self.real)
            .replace("{suffix}", self.table_suffix)
        )
        if self.named_params:
            text = re.sub(r"%\((\w+)\)s", r":\1", text)
        return text


def table_definition(name: str = "{t}") -> str:
    """The job table as this version of the SDK creates it (``{real}``/``{suffix}`` filled in
    by :meth:`Dialect.sql`)."""
    return f"""CREATE TABLE IF NOT EXISTS {name} (
        queue TEXT NOT NULL DEFAULT 'default',
        id TEXT NOT NULL,
        idx BIGINT NOT NULL,
        prompt TEXT NOT NULL,
        model TEXT NOT NULL,
        image_size TEXT NOT NULL,
        num INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ({_STATES})),
        attempts INTEGER NOT NULL DEFAULT 0,
        idempotency_key TEXT NOT NULL,
        lease_owner TEXT,
        lease_until {{real}},
        reserved INTEGER NOT NULL DEFAULT 0,
        credits INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
        urls TEXT,
        files TEXT,
        error TEXT,
        reason TEXT,
        updated_at {{real}} NOT NULL,
        PRIMARY KEY (queue, id)
    ){{suffix}}"""


INDEXES: Final = (
    # Claims take the next pending rows of a queue in input order.
    "CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (queue, idx) WHERE state = 'pending'",
    # The reaper looks for expired leases, the heartbeat for its own.
    f"CREATE INDEX IF NOT EXISTS {{t}}_lease ON {{t}} (lease_until) WHERE {_LEASED}",
    f"CREATE INDEX IF NOT EXISTS {{t}}_owner ON {{t}} (lease_owner) WHERE {_LEASED}",
    # Exports and listings in input order, a page at a time. Not led by the queue: an index
    # that is would tie with the key for a lookup by (queue, id), and Postgres's generic plan
    # of a prepared lookup then scans the whole queue through it.
    "CREATE INDEX IF NOT EXISTS {t}_order ON {t} (idx, id)",
)


class Statements:
    """Every statement a store runs on its queue, built once per store."""

    def __init__(self, dialect: Dialect, queue: str) -> None:
        self.dialect = dialect
        self.queue = queue

    def sql(self, text: str) -> str:
        return self.dialect.sql(text, self.queue)

    # -- adding and taking jobs -----------------------------------------------------------

    @functools.cached_property
    def next_index(self) -> str:
        return self.sql("SELECT coalesce(max(idx) + 1, 0) FROM {t} WHERE queue = {q}")

    @functools.cached_property
    def add(self) -> str:
        return self.sql(
            f"INSERT INTO {{t}} (queue, {_COLUMNS}, idempotency_key, updated_at) "
            "VALUES ({q}, %(id)s, %(idx)s, %(prompt)s, %(model)s, %(image_size)s, %(num)s, "
            "%(key)s, {now}) ON CONFLICT (queue, id) DO NOTHING"
        )

    @functools.cached_property
    def begin(self) -> str:
        """Batch mode: insert the job as claimed by this run, or take it back if an earlier
        run left it pending, failed or skipped (with the fields of this run's job; a new
        Idempotency-Key only if they changed). Generated, ambiguous and held rows stay."""
        changed = (
            "({t}.prompt <> excluded.prompt OR {t}.model <> excluded.model "
            "OR {t}.image_size <> excluded.image_size OR {t}.num <> excluded.num)"
        )
        return self.sql(
            f"INSERT INTO {{t}} (queue, {_COLUMNS}, state, idempotency_key, lease_owner, "
            "lease_until, updated_at) VALUES ({q}, %(id)s, %(idx)s, %(prompt)s, %(model)s, "
            "%(image_size)s, %(num)s, 'claimed', %(key)s, %(owner)s, {now} + %(lease)s, {now}) "
            "ON CONFLICT (queue, id) DO UPDATE SET state = 'claimed', idx = excluded.idx, "
            f"idempotency_key = CASE WHEN {changed} THEN excluded.idempotency_key "
            "ELSE {t}.idempotency_key END, "
            "prompt = excluded.prompt, model = excluded.model, image_size = excluded.image_size, "
            "num = excluded.num, lease_owner = excluded.lease_owner, "
            "lease_until = excluded.lease_until, error = NULL, reason = NULL, "
            "updated_at = excluded.updated_at "
            "WHERE {t}.state IN ('pending','failed','skipped')"
        )

    @functools.cached_property
    def row(self) -> str:
        return self.sql(f"SELECT {_ROW} FROM {{t}} WHERE queue = {{q}} AND id = %(id)s")

    def _among(self, subquery: str) -> str:
        """``id`` is one of those ``subquery`` selects, the subquery run once.

        On Postgres as an array (an init plan, then the primary key's index): as ``id IN
        (subquery)`` the planner may join the whole queue against it (a sequential scan per
        claim), or run a ``LIMIT ... FOR UPDATE`` subquery again for every row it joins.
        """
        if self.dialect.name == "postgres":
            return f"id = ANY (ARRAY({subquery}))"
        return f"id IN ({subquery})"

    @functools.cached_property
    def claim(self) -> str:
        picked = (
            "SELECT id FROM {t} WHERE queue = {q} AND state = 'pending' ORDER BY idx "
            "LIMIT %(n)s{lock}"
        )
        return self.sql(
            "UPDATE {t} SET state = 'claimed', lease_owner = %(owner)s, "
            "lease_until = {now} + %(lease)s, updated_at = {now} "
            f"WHERE queue = {{q}} AND {self._among(picked)} "
            f"RETURNING {_COLUMNS}, idempotency_key"
        )

    @functools.cached_property
    def claimed_by(self) -> str:
        # A claim whose commit's answer was lost: the rows it took, found again by owner.
        return self.sql(
            f"SELECT {_COLUMNS}, idempotency_key FROM {{t}} WHERE queue = {{q}} "
            "AND lease_owner = %(owner)s AND state = 'claimed'"
        )

    # -- a job's progress -----------------------------------------------------------------

    @functools.cached_property
    def sending(self) -> str:
        # Only a row this run still holds, on an unexpired lease: a row the reaper handed to
        # another worker is never sent twice. Written again before each later attempt of
        # the same job (``uncertain``: what the attempts before it may have cost), and safe
        # to repeat when a commit's answer was lost.
        # (The owner compared through coalesce: as a plain column, Postgres may look the row
        # up through the owner index, among every row this run holds, instead of its key.)
        return self.sql(
            "UPDATE {t} SET state = 'sending', reserved = %(credits)s, "
            "uncertain = uncertain + %(uncertain)s, "
            "idempotency_key = coalesce(%(key)s, idempotency_key), updated_at = {now} "
            "WHERE queue = {q} AND id = %(id)s AND state IN ('claimed','sending') "
            "AND coalesce(lease_owner, '') = %(owner)s AND lease_until > {now}"
        )

    @functools.cached_property
    def done(self) -> str:
        # A result is recorded even if the reaper made the row ambiguous meanwhile: the
        # run that sent it knows better.
        return self.sql(
            f"{_DONE} WHERE queue = {{q}} AND id = %(id)s AND lease_owner = %(owner)s "
            "AND state IN ('claimed','sending','ambiguous')"
        )

    @functools.cached_property
    def files(self) -> str:
        return self.sql(
            "UPDATE {t} SET files = %(files)s, error = %(error)s, updated_at = {now} "
            "WHERE queue = {q} AND id = %(id)s AND state = 'done'"
        )

    @functools.cached_property
    def finish(self) -> str:
        return self.sql(
            f"{_FINISH} WHERE queue = {{q}} AND id = %(id)s AND lease_owner = %(owner)s "
            "AND state IN ('claimed','sending','ambiguous')"
        )

    @functools.cached_property
    def release(self) -> str:
        return self.sql(
            "UPDATE {t} SET state = 'pending', reserved = 0, lease_owner = NULL, "
            "lease_until = NULL, updated_at = {now} "
            f"WHERE queue = {{q}} AND id = %(id)s AND lease_owner = %(owner)s AND {_LEASED}"
        )

    # -- leases ---------------------------------------------------------------------------

    @functools.cached_property
    def heartbeat(self) -> str:
        # Rows another transaction holds right now (a result being committed) are skipped,
        # never waited for: lock order then cannot deadlock, and the next beat renews them.
        mine = f"SELECT id FROM {{t}} WHERE lease_owner = %(owner)s AND {_LEASED}{{lock}}"
        return self.sql(
            "UPDATE {t} SET lease_until = {now} + %(lease)s "
            f"WHERE queue = {{q}} AND {self._among(mine)}"
        )

    def _reap(self, which: str) -> str:
        # Claimed rows were never sent: back to pending. Sending rows may have been paid
        # for: ambiguous, keeping their owner so its late result is still taken.
        return self.sql(
            "UPDATE {t} SET "
            "state = CASE WHEN state = 'claimed' THEN 'pending' ELSE 'ambiguous' END, "
            "lease_owner = CASE WHEN state = 'claimed' THEN NULL ELSE lease_owner END, "
            "lease_until = NULL, updated_at = {now} WHERE queue = {q} AND "
            + self._among(
                f"SELECT id FROM {{t}} WHERE queue = {{q}} AND {_LEASED} AND {which}{{lock}}"
            )
        )

    @functools.cached_property
    def reap_expired(self) -> str:
        return self._reap("lease_until < {now}")

    @functools.cached_property
    def reap_owner(self) -> str:
        return self._reap("lease_owner = %(owner)s")

    @functools.cached_property
    def owners(self) -> str:
        return self.sql(f"SELECT DISTINCT lease_owner FROM {{t}} WHERE queue = {{q}} AND {_LEASED}")

    @functools.cached_property
    def close(self) -> str:
        # A run that ends gives back what it claimed and never sent; a row still marked
        # sending by it (a run that failed mid-send) may have been paid for.
        return self.sql(
            "UPDATE {t} SET "
            "state = CASE WHEN state = 'claimed' THEN 'pending' ELSE 'ambiguous' END, "
            "lease_owner = CASE WHEN state = 'claimed' THEN NULL ELSE lease_owner END, "
            "lease_until = NULL, updated_at = {now} "
            f"WHERE queue = {{q}} AND lease_owner = %(owner)s AND {_LEASED}"
        )

    # -- reading and managing -------------------------------------------------------------

    @functools.cached_property
    def status(self) -> str:
        # A row being sent holds its reservation: the server may be charging it right now
        # (or did, before its worker died), so it counts as may-have-been-spent.
        return self.sql(
            "SELECT state, count(*), coalesce(sum(credits), 0), coalesce(sum(uncertain), 0), "
            "coalesce(sum(CASE WHEN state IN ('sending','ambiguous') THEN reserved ELSE 0 END), "
            "0) FROM {t} WHERE queue = {q} GROUP BY state"
        )

    @functools.cached_property
    def ambiguous(self) -> str:
        return self.sql(
            "SELECT id FROM {t} WHERE queue = {q} AND state = 'ambiguous' ORDER BY idx, id LIMIT 20"
        )

    def retry(self, states: Sequence[str]) -> str:
        listed = ",".join(f"'{s}'" for s in states)  # from a fixed set: safe to inline
        return self.sql(
            "UPDATE {t} SET state = 'pending', "
            "uncertain = uncertain + CASE WHEN state = 'ambiguous' THEN reserved ELSE 0 END, "
            "reserved = 0, lease_owner = NULL, lease_until = NULL, error = NULL, reason = NULL, "
            f"updated_at = {{now}} WHERE queue = {{q}} AND state IN ({listed})"
        )

    @functools.cached_property
    def page(self) -> str:
        return self.sql(
            f"SELECT {_ROW} FROM {{t}} WHERE queue = {{q}} "
            "AND (idx > %(idx)s OR (idx = %(idx)s AND id > %(id)s)) ORDER BY idx, id LIMIT %(n)s"
        )

    @functools.cached_property
    def page_done(self) -> str:
        return self.sql(
            f"SELECT {_ROW} FROM {{t}} WHERE queue = {{q}} AND state = 'done' "
            "AND (idx > %(idx)s OR (idx = %(idx)s AND id > %(id)s)) ORDER BY idx, id LIMIT %(n)s"
        )

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one store, a few chunk sizes
    def generated(self, count: int) -> str:
        marks = ", ".join(f"%(i{n})s" for n in range(count))
        return self.sql(
            f"SELECT id FROM {{t}} WHERE queue = {{q}} AND state = 'done' AND id IN ({marks})"
        )

    # -- the spool, put back (recover.py) -------------------------------------------------

    @functools.cached_property
    def lock_row(self) -> str:
        return self.sql(
            "SELECT state, lease_owner, reserved, urls FROM {t} "
            "WHERE queue = {q} AND id = %(id)s" + (" FOR UPDATE" if self.dialect.lock else "")
        )

    @functools.cached_property
    def recover_done(self) -> str:
        return self.sql(f"{_DONE} WHERE queue = {{q}} AND id = %(id)s")

    @functools.cached_property
    def recover_finish(self) -> str:
        return self.sql(f"{_FINISH} WHERE queue = {{q}} AND id = %(id)s")

    @functools.cached_property
    def add_uncertain(self) -> str:
        return self.sql(
            "UPDATE {t} SET uncertain = uncertain + %(uncertain)s, updated_at = {now} "
            "WHERE queue = {q} AND id = %(id)s"
        )


ROW_FIELDS: Final = (
    "id",
    "index",
    "prompt",
    "model",
    "image_size",
    "num",
    "state",
    "lease_owner",
    "idempotency_key",
    "urls",
    "credits",
    "attempts",
    "files",
    "error",
    "reason",
    "reserved",
    "uncertain",
)


def _decoded(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        values = json.loads(text)
    except ValueError:
        return ()
    return tuple(v for v in values if isinstance(v, str)) if isinstance(values, list) else ()


def row_dict(row: Sequence[object]) -> dict[str, Any]:
    """A job row as a dict (``urls`` and ``files`` decoded)."""
    data = dict(zip(ROW_FIELDS, row, strict=True))
    data["urls"] = list(_decoded(data["urls"]))  # type: ignore[arg-type]
    data["files"] = list(_decoded(data["files"]))  # type: ignore[arg-type]
    return data


def record_of(data: dict[str, Any]) -> JournalRecord:
    """A done row as the journal record a rerun resumes from."""
    return JournalRecord(
        id=data["id"],
        status="succeeded" if not data["error"] else "failed",
        urls=tuple(data["urls"]),
        credits=int(data["credits"]),
        attempts=int(data["attempts"]),
        paths=tuple(data["files"]),
        prompt=data["prompt"],
        model=data["model"],
        image_size=data["image_size"],
        num=int(data["num"]),
    )
