"""Job stores: where a batch records its jobs (``journal=``) and where workers find theirs.

- ``"run.jsonl"`` or any path: the JSONL journal (:class:`JsonlStore`), one run at a time;
- ``"sqlite:///run.db"``: :class:`SqliteStore`, embedded, flat memory at millions of jobs;
- ``"postgresql://..."``: :class:`PostgresStore` (extra ``postgres``), shared by workers on
  many machines. psycopg is imported only when such a store is opened.

:func:`open_store` turns what ``journal=`` was given into a store; ``base`` has the
protocol (:class:`JobStore`, :class:`StoreSession`) and the states. The SQL stores are
``backend`` (connections, schema, spool) < ``session`` (a run's writes) < ``sqlstore``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ...errors import InvalidRequestError
from .base import (
    FINAL_STATES,
    STATES,
    Begin,
    JobStore,
    StoredJob,
    StoreError,
    StoreSession,
    StoreStatus,
    StoreUnavailableError,
)
from .jsonl import JsonlStore
from .recover import Recovered
from .sqlite import SqliteStore
from .sqlstore import SqlStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "FINAL_STATES",
    "STATES",
    "Begin",
    "JobStore",
    "JsonlStore",
    "PostgresStore",
    "Recovered",
    "SqlStore",
    "SqliteStore",
    "StoreError",
    "StoreSession",
    "StoreStatus",
    "StoreUnavailableError",
    "StoredJob",
    "open_store",
]

_POSTGRES = ("postgresql://", "postgres://")


def open_store(target: str | os.PathLike[str] | JobStore) -> JobStore:
    """The job store ``target`` names: a store object as is, ``sqlite:///path``,
    ``postgresql://...``, else the path of a JSONL journal."""
    if not isinstance(target, str | os.PathLike):
        if callable(getattr(target, "connect", None)):
            return target
        raise InvalidRequestError(
            "journal must be a path, a sqlite:/// or postgresql:// URL, or a job store, "
            f"got {type(target).__name__}",
            param="journal",
        )
    text = os.fspath(target)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith("sqlite://"):
        return SqliteStore.from_url(text)
    if text.startswith(_POSTGRES):
        from .postgres import PostgresStore

        return PostgresStore(text)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme is not None:
        raise InvalidRequestError(
            f"unknown job store scheme {scheme.group(1)!r}: use a path (JSONL), sqlite:///path or "
            "postgresql://...",
            param="journal",
        )
    return JsonlStore(text)


def __getattr__(name: str) -> Any:
    # PostgresStore imports psycopg: only when asked for.
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
