"""The options of the SQL job stores, from keyword arguments or the store URL's query string.

``sqlite:///jobs.db?queue=nightly&retry_window=60`` and ``SqliteStore("jobs.db",
queue="nightly", retry_window=60)`` mean the same; an option given both ways is refused, as
is any option neither the SDK nor (for Postgres) libpq knows (``nanobanana_async.urls``).
"""

from __future__ import annotations

import os
import pathlib
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from ...errors import InvalidRequestError
from ...urls import flag, split_options
from ...validation import positive_problem, seconds_problem, whole_problem
from .sql import QUEUE_PATTERN

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETRY_WINDOW",
    "DEFAULT_STATEMENT_TIMEOUT",
    "SQL_OPTIONS",
    "resolve",
]

DEFAULT_LEASE: Final = 60.0
DEFAULT_RETRY_WINDOW: Final = 20.0
DEFAULT_STATEMENT_TIMEOUT: Final = 30.0


def _parsed(value: object, parse: Callable[[str], object], what: str) -> object:
    # A URL's options are text; a keyword is already a number.
    if isinstance(value, str):
        try:
            return parse(value)
        except ValueError:
            raise ValueError(f"must be {what}, got {value!r}") from None
    return value


def _checked(problem: str | None, value: object) -> Any:
    if problem is not None:
        raise ValueError(problem)
    return value


def _number(value: object) -> float:
    value = _parsed(value, float, "a number of seconds")
    return float(_checked(seconds_problem(value), value))


def positive_seconds(value: object) -> float:
    value = _parsed(value, float, "a number of seconds")
    return float(_checked(positive_problem(value, unit="number of seconds"), value))


def queue_name(value: object) -> str:
    if not isinstance(value, str) or not QUEUE_PATTERN.fullmatch(value):
        raise ValueError(
            f"a queue name is 1-64 letters, digits and _.:- (starting with a letter or digit), "
            f"got {value!r}"
        )
    return value


def directory(value: object) -> pathlib.Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ValueError(f"expected a directory path, got {value!r}")
    return pathlib.Path(os.fspath(value))


def positive_int(value: object) -> int:
    value = _parsed(value, int, "a whole number")
    return int(_checked(whole_problem(value, 1), value))


# The options every SQL store reads, and how each is checked.
SQL_OPTIONS: Final[Mapping[str, Callable[[object], Any]]] = {
    "lease": positive_seconds,
    "queue": queue_name,
    "retry_window": _number,
    "statement_timeout": _number,  # 0: no limit
    "spool_dir": directory,
    "wait_for_lease": flag,
}


def resolve(
    url: str | None,
    given: Mapping[str, object],
    *,
    options: Mapping[str, Callable[[object], Any]],
    passthrough: Collection[str] = (),
) -> tuple[str | None, dict[str, Any]]:
    """``url`` without the SDK's options, and every option's value (from the URL or a
    keyword; ``given`` holds the keywords, None where not passed)."""
    values: dict[str, Any] = {}
    clean = url
    if url is not None and "?" in url:
        rest, values = split_options(
            url, what="job store", options=options, passthrough=passthrough
        )
        # Rebuilt by hand: urlunsplit drops the // of sqlite:///path and postgresql:///db.
        query = urllib.parse.urlsplit(rest).query
        clean = url.partition("?")[0] + (f"?{query}" if query else "")
    for name, value in given.items():
        if value is None:
            continue
        if name in values:
            raise InvalidRequestError(
                f"{name} is given both in the job store URL and as an argument: give it once",
                param=name,
            )
        try:
            values[name] = options[name](value)
        except ValueError as exc:
            raise InvalidRequestError(f"{name}: {exc}", param=name) from None
    return clean, values
