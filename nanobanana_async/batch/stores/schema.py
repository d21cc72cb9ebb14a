"""The job table's schema version, and the migrations that bring an older table up to date.

``nanobanana_schema`` holds one row for the job table: its version and the store's id (a
random UUID given when the table was made, which names the store's local spool whatever URL
reaches it: directly, or through pgbouncer). Every connection checks the version (one
query); a connection that finds it older upgrades the table in place, in one transaction
under a lock, so workers starting together upgrade it once.

Versions:

1. ``nanobanana_jobs`` keyed by ``id`` (no schema table yet).
2. A ``queue`` column in the key (``(queue, id)``; older rows are queue ``"default"``); jobs
   stored ``failed`` after an answer was lost (``uncertain > 0``) become ``ambiguous``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol

from .base import StoreError
from .sql import INDEXES, TABLE, Dialect, table_definition

__all__ = ["SCHEMA_TABLE", "VERSION", "SchemaAccess", "ensure_schema"]

SCHEMA_TABLE: Final = "nanobanana_schema"
VERSION: Final = 2
_COMPONENT = "jobs"
_V1_COLUMNS = (
    "id, idx, prompt, model, image_size, num, state, attempts, idempotency_key, lease_owner, "
    "lease_until, reserved, credits, uncertain, urls, files, error, reason, updated_at"
)


class SchemaAccess(Protocol):
    """What a backend lends :func:`ensure_schema` on one of its connections."""

    def query(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        """Rows of one statement."""
        ...

    def run(self, sql: str) -> None:
        """One statement (DDL) without parameters."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """A transaction that no other connection's schema check runs alongside."""
        ...


def _create(dialect: Dialect) -> list[str]:
    return [dialect.sql(table_definition()), *(dialect.sql(s) for s in INDEXES)]


def _from_v1(dialect: Dialect) -> list[str]:
    if dialect.name == "postgres":
        steps = [
            f"ALTER TABLE {TABLE} ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'",
            f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {TABLE}_pkey",
            f"ALTER TABLE {TABLE} ADD PRIMARY KEY (queue, id)",
            f"DROP INDEX IF EXISTS {TABLE}_pending",
        ]
    else:  # SQLite cannot change a primary key: the table is rebuilt (its indexes go with it)
        new = f"{TABLE}_v2"
        steps = [
            f"DROP TABLE IF EXISTS {new}",
            dialect.sql(table_definition(new)),
            f"INSERT INTO {new} (queue, {_V1_COLUMNS}) SELECT 'default', {_V1_COLUMNS} "
            f"FROM {TABLE}",
            f"DROP TABLE {TABLE}",
            f"ALTER TABLE {new} RENAME TO {TABLE}",
        ]
    return [
        *steps,
        *(dialect.sql(s) for s in INDEXES),
        # A job whose every answer was lost may have been charged: never a plain failure.
        f"UPDATE {TABLE} SET state = 'ambiguous' WHERE state = 'failed' AND uncertain > 0",
    ]


# Migrations from each older version to the next; version 1 has no schema table.
_UPGRADES: Final[dict[int, Callable[[Dialect], list[str]]]] = {1: _from_v1}


def _found(db: SchemaAccess, dialect: Dialect) -> tuple[int, str] | None:
    if not db.query(dialect.sql(dialect.table_exists), {"name": SCHEMA_TABLE})[0][0]:
        return None
    rows = db.query(
        dialect.sql(f"SELECT version, store_id FROM {SCHEMA_TABLE} WHERE component = %(c)s"),
        {"c": _COMPONENT},
    )
    return (int(rows[0][0]), str(rows[0][1])) if rows else None


def ensure_schema(db: SchemaAccess, dialect: Dialect, where: str, *, create: bool = True) -> str:
    """Create or upgrade the job table; the store's id. Refuses a newer schema, and with
    ``create`` false a database that holds no job store (nothing is created in it)."""
    found = _found(db, dialect)
    if found is not None and found[0] == VERSION:
        return found[1]
    table_exists = dialect.sql(dialect.table_exists)
    if not create and found is None and not db.query(table_exists, {"name": TABLE})[0][0]:
        raise StoreError(
            f"no job store in {where} (nothing was created): check the URL, or add jobs to a "
            "new store with nanobanana jobs add FILE --store URL"
        )
    with db.exclusive():
        found = _found(db, dialect)  # another worker may have done it while we waited
        if found is None:
            table = db.query(dialect.sql(dialect.table_exists), {"name": TABLE})[0][0]
            version, store_id = (1 if table else 0), uuid.uuid4().hex
        else:
            version, store_id = found
        if version > VERSION:
            raise StoreError(
                f"job store {where} was written by a newer nanobanana-async (schema version "
                f"{version}, this one knows up to {VERSION}): upgrade nanobanana-async"
            )
        if version == 0:
            steps = _create(dialect)
        else:
            steps = [s for v in range(version, VERSION) for s in _UPGRADES[v](dialect)]
        db.run(
            dialect.sql(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (component TEXT PRIMARY KEY, "
                "version INTEGER NOT NULL, store_id TEXT NOT NULL)"
            )
        )
        for statement in steps:
            db.run(statement)
        db.query(
            dialect.sql(
                f"INSERT INTO {SCHEMA_TABLE} (component, version, store_id) "
                "VALUES (%(c)s, %(v)s, %(id)s) ON CONFLICT (component) DO UPDATE "
                "SET version = excluded.version RETURNING version"
            ),
            {"c": _COMPONENT, "v": VERSION, "id": store_id},
        )
    return store_id
