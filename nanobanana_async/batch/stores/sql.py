"""The SQL job stores' statements: one table, a row per job, the same SQL on SQLite and Postgres.

A job's row moves ``pending -> claimed -> sending -> done | failed | skipped``, and to
``ambiguous`` when a run stopped while it was ``sending``. ``sending`` is written (and
awaited) before the request leaves, so a killed worker's jobs are either never sent
(``claimed``: back to ``pending``) or visible as ambiguous, never silently paid twice.
Times are seconds since the epoch on the database's clock, so leases mean the same to
every worker whatever their clocks say.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Final

import attrs

__all__ = ["TABLE", "Dialect", "clean_text", "json_list"]

TABLE: Final = "nanobanana_jobs"
_STATES = "'pending','claimed','sending','done','failed','skipped','ambiguous'"
_LEASED = "state IN ('claimed','sending')"
_COLUMNS = "id, idx, prompt, model, image_size, num"


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
    table_suffix: str = ""
    named_params: bool = False  # SQLite's :name instead of %(name)s

    @functools.lru_cache(maxsize=256)  # noqa: B019 - a few dialects, a few dozen statements
    def sql(self, text: str) -> str:
        text = text.replace("{t}", TABLE).replace("{now}", self.now).replace("{lock}", self.lock)
        if self.named_params:
            text = re.sub(r"%\((\w+)\)s", r":\1", text)
        return text

    # -- schema --------------------------------------------------------------------------

    @property
    def schema(self) -> tuple[str, ...]:
        return tuple(
            self.sql(s)
            for s in (
                f"""CREATE TABLE IF NOT EXISTS {{t}} (
                    id TEXT PRIMARY KEY,
                    idx BIGINT NOT NULL,
                    prompt TEXT NOT NULL,
                    model TEXT NOT NULL,
                    image_size TEXT NOT NULL,
                    num INTEGER NOT NULL,
                    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ({_STATES})),
                    attempts INTEGER NOT NULL DEFAULT 0,
                    idempotency_key TEXT NOT NULL,
                    lease_owner TEXT,
                    lease_until {self.real},
                    reserved INTEGER NOT NULL DEFAULT 0,
                    credits INTEGER NOT NULL DEFAULT 0,
                    uncertain INTEGER NOT NULL DEFAULT 0,
                    urls TEXT,
                    files TEXT,
                    error TEXT,
                    reason TEXT,
                    updated_at {self.real} NOT NULL
                ){self.table_suffix}""",
                # Claims take the next pending rows in input order.
                "CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (idx) WHERE state = 'pending'",
                # The reaper looks for expired leases, the heartbeat for its own.
                f"CREATE INDEX IF NOT EXISTS {{t}}_lease ON {{t}} (lease_until) WHERE {_LEASED}",
                f"CREATE INDEX IF NOT EXISTS {{t}}_owner ON {{t}} (lease_owner) WHERE {_LEASED}",
                # Exports and listings in input order, a page at a time.
                "CREATE INDEX IF NOT EXISTS {t}_order ON {t} (idx, id)",
            )
        )

    # -- adding and taking jobs -----------------------------------------------------------

    @property
    def next_index(self) -> str:
        return self.sql("SELECT coalesce(max(idx) + 1, 0) FROM {t}")

    @property
    def add(self) -> str:
        return self.sql(
            f"INSERT INTO {{t}} ({_COLUMNS}, idempotency_key, updated_at) "
            "VALUES (%(id)s, %(idx)s, %(prompt)s, %(model)s, %(image_size)s, %(num)s, %(key)s, "
            "{now}) ON CONFLICT (id) DO NOTHING"
        )

    @property
    def begin(self) -> str:
        """Batch mode: insert the job as claimed by this run, or take it back if an earlier
        run left it pending, failed or skipped (with the fields of this run's job; a new
        Idempotency-Key only if they changed). Generated, ambiguous and held rows stay."""
        changed = (
            "({t}.prompt <> excluded.prompt OR {t}.model <> excluded.model "
            "OR {t}.image_size <> excluded.image_size OR {t}.num <> excluded.num)"
        )
        return self.sql(
            f"INSERT INTO {{t}} ({_COLUMNS}, state, idempotency_key, lease_owner, lease_until, "
            "updated_at) VALUES (%(id)s, %(idx)s, %(prompt)s, %(model)s, %(image_size)s, "
            "%(num)s, 'claimed', %(key)s, %(owner)s, {now} + %(lease)s, {now}) "
            "ON CONFLICT (id) DO UPDATE SET state = 'claimed', idx = excluded.idx, "
            f"idempotency_key = CASE WHEN {changed} THEN excluded.idempotency_key "
            "ELSE {t}.idempotency_key END, "
            "prompt = excluded.prompt, model = excluded.model, image_size = excluded.image_size, "
            "num = excluded.num, lease_owner = excluded.lease_owner, "
            "lease_until = excluded.lease_until, error = NULL, reason = NULL, "
            "updated_at = excluded.updated_at "
            "WHERE {t}.state IN ('pending','failed','skipped')"
        )

    @property
    def row(self) -> str:
        return self.sql(
            f"SELECT {_COLUMNS}, state, lease_owner, idempotency_key, urls, credits, attempts, "
            "files, error, reason, reserved, uncertain FROM {t} WHERE id = %(id)s"
        )

    @property
    def claim(self) -> str:
        return self.sql(
            "UPDATE {t} SET state = 'claimed', lease_owner = %(owner)s, "
            "lease_until = {now} + %(lease)s, updated_at = {now} "
            "WHERE id IN (SELECT id FROM {t} WHERE state = 'pending' ORDER BY idx "
            "LIMIT %(n)s{lock}) "
            f"RETURNING {_COLUMNS}, idempotency_key"
        )

    # -- a job's progress -----------------------------------------------------------------

    @property
    def sending(self) -> str:
        # Only a row this run still holds, on an unexpired lease: a row the reaper handed to
        # another worker is never sent twice.
        return self.sql(
            "UPDATE {t} SET state = 'sending', reserved = %(credits)s, "
            "idempotency_key = coalesce(%(key)s, idempotency_key), updated_at = {now} "
            "WHERE id = %(id)s AND state = 'claimed' AND lease_owner = %(owner)s "
            "AND lease_until > {now}"
        )

    @property
    def done(self) -> str:
        # A result is recorded even if the reaper made the row ambiguous meanwhile: the
        # run that sent it knows better.
        return self.sql(
            "UPDATE {t} SET state = 'done', urls = %(urls)s, credits = %(credits)s, "
            "uncertain = uncertain + %(uncertain)s, attempts = %(attempts)s, files = %(files)s, "
            "error = %(error)s, reason = NULL, reserved = 0, lease_owner = NULL, "
            "lease_until = NULL, updated_at = {now} "
            "WHERE id = %(id)s AND lease_owner = %(owner)s "
            "AND state IN ('claimed','sending','ambiguous')"
        )

    @property
    def files(self) -> str:
        return self.sql(
            "UPDATE {t} SET files = %(files)s, error = %(error)s, updated_at = {now} "
            "WHERE id = %(id)s AND state = 'done'"
        )

    @property
    def finish(self) -> str:
        return self.sql(
            "UPDATE {t} SET state = %(state)s, uncertain = uncertain + %(uncertain)s, "
            "attempts = %(attempts)s, error = %(error)s, reason = %(reason)s, reserved = 0, "
            "lease_owner = NULL, lease_until = NULL, updated_at = {now} "
            "WHERE id = %(id)s AND lease_owner = %(owner)s "
            "AND state IN ('claimed','sending','ambiguous')"
        )

    @property
    def release(self) -> str:
        return self.sql(
            "UPDATE {t} SET state = 'pending', reserved = 0, lease_owner = NULL, "
            "lease_until = NULL, updated_at = {now} "
            f"WHERE id = %(id)s AND lease_owner = %(owner)s AND {_LEASED}"
        )

    @property
    def unsettled(self) -> str:
        return self.sql(
            "UPDATE {t} SET state = 'ambiguous', reserved = 0, "
            "uncertain = uncertain + %(uncertain)s, lease_until = NULL, updated_at = {now} "
            f"WHERE id = %(id)s AND lease_owner = %(owner)s AND {_LEASED}"
        )

    # -- leases ---------------------------------------------------------------------------

    @property
    def heartbeat(self) -> str:
        # Rows another transaction holds right now (a result being committed) are skipped,
        # never waited for: lock order then cannot deadlock, and the next beat renews them.
        return self.sql(
            "UPDATE {t} SET lease_until = {now} + %(lease)s WHERE id IN (SELECT id FROM {t} "
            f"WHERE lease_owner = %(owner)s AND {_LEASED}{{lock}})"
        )

    def _reap(self, which: str) -> str:
        # Claimed rows were never sent: back to pending. Sending rows may have been paid
        # for: ambiguous, keeping their owner so its late result is still taken.
        return self.sql(
            "UPDATE {t} SET "
            "state = CASE WHEN state = 'claimed' THEN 'pending' ELSE 'ambiguous' END, "
            "lease_owner = CASE WHEN state = 'claimed' THEN NULL ELSE lease_owner END, "
            "lease_until = NULL, updated_at = {now} "
            f"WHERE id IN (SELECT id FROM {{t}} WHERE {_LEASED} AND {which}{{lock}})"
        )

    @property
    def reap_expired(self) -> str:
        return self._reap("lease_until < {now}")

    @property
    def reap_owner(self) -> str:
        return self._reap("lease_owner = %(owner)s")

    @property
    def owners(self) -> str:
        return self.sql(f"SELECT DISTINCT lease_owner FROM {{t}} WHERE {_LEASED}")

    @property
    def close(self) -> str:
        # A run that ends gives back what it claimed and never sent; a row still marked
        # sending by it (a run that failed mid-send) may have been paid for.
        return self.sql(
            "UPDATE {t} SET "
            "state = CASE WHEN state = 'claimed' THEN 'pending' ELSE 'ambiguous' END, "
            "lease_owner = CASE WHEN state = 'claimed' THEN NULL ELSE lease_owner END, "
            f"lease_until = NULL, updated_at = {{now}} WHERE lease_owner = %(owner)s AND {_LEASED}"
        )

    # -- reading and managing -------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.sql(
            "SELECT state, count(*), coalesce(sum(credits), 0), coalesce(sum(uncertain), 0), "
            "coalesce(sum(CASE WHEN state = 'ambiguous' THEN reserved ELSE 0 END), 0) "
            "FROM {t} GROUP BY state"
        )

    @property
    def ambiguous(self) -> str:
        return self.sql("SELECT id FROM {t} WHERE state = 'ambiguous' ORDER BY idx, id LIMIT 20")

    def retry(self, states: Sequence[str]) -> str:
        listed = ",".join(f"'{s}'" for s in states)  # from a fixed set: safe to inline
        return self.sql(
            "UPDATE {t} SET state = 'pending', "
            "uncertain = uncertain + CASE WHEN state = 'ambiguous' THEN reserved ELSE 0 END, "
            "reserved = 0, lease_owner = NULL, lease_until = NULL, error = NULL, reason = NULL, "
            f"updated_at = {{now}} WHERE state IN ({listed})"
        )

    @property
    def page(self) -> str:
        return self.sql(
            f"SELECT {_COLUMNS}, state, lease_owner, idempotency_key, urls, credits, attempts, "
            "files, error, reason, reserved, uncertain FROM {t} "
            "WHERE idx > %(idx)s OR (idx = %(idx)s AND id > %(id)s) ORDER BY idx, id LIMIT %(n)s"
        )

    @property
    def page_done(self) -> str:
        return self.sql(
            f"SELECT {_COLUMNS}, state, lease_owner, idempotency_key, urls, credits, attempts, "
            "files, error, reason, reserved, uncertain FROM {t} "
            "WHERE state = 'done' AND (idx > %(idx)s OR (idx = %(idx)s AND id > %(id)s)) "
            "ORDER BY idx, id LIMIT %(n)s"
        )

    def generated(self, count: int) -> str:
        marks = ", ".join(f"%(i{n})s" for n in range(count))
        return self.sql(f"SELECT id FROM {{t}} WHERE state = 'done' AND id IN ({marks})")


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
