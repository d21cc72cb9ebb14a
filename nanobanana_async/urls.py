"""The URLs the SDK parses besides the API's own (job stores, shared limits).

Two rules hold for every one of them:

- An option in the query string is either one the SDK reads, one the URL's own driver reads
  (libpq, coredis), or refused, naming the known ones: a misspelled ``max_credits`` must never
  run a batch with no budget at all.
- User names and passwords are percent-decoded before use, as URLs require them to be
  written (``%40`` for ``@``), and no message ever shows a password (:func:`redact_url`).
"""

from __future__ import annotations

import difflib
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .errors import InvalidRequestError

__all__ = ["credentials", "flag", "redact_url", "split_options"]

# Query options whose value is a secret (libpq's password, coredis's password), and the
# ``key=value`` connection-string form of the same.
_SECRET_KEYS = frozenset({"password", "sslpassword", "pass", "passwd", "secret", "token"})
_KEYWORD_SECRET = re.compile(r"\b(password|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact_url(url: str) -> str:
    """``url`` for messages: its password and any secret query option shown as ``***``.

    Also takes libpq's ``key=value`` connection strings (``password=...`` redacted). A URL
    that does not parse is not shown at all.
    """
    if "://" not in url:
        return _KEYWORD_SECRET.sub(r"\1\2***", url)
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username is not None or parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}{':***' if parts.password is not None else ''}@{netloc}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    shown = [(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(shown, safe="*"), "")
    )


def flag(value: object) -> bool:
    """An on/off option: a bool as given, or in a URL ``1``/``0``, ``true``/``false``,
    ``yes``/``no``, ``on``/``off`` (empty: off). Raises ``ValueError`` otherwise."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1 or 0 (true or false)")


def credentials(url: str) -> tuple[str | None, str | None]:
    """The user name and password of ``url``, percent-decoded (None where absent)."""
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return user, password


def split_options(
    url: str,
    *,
    what: str,
    options: Mapping[str, Callable[[str], Any]],
    passthrough: Collection[str] = (),
) -> tuple[str, dict[str, Any]]:
    """``url`` without the SDK's options of its query string, and those options parsed.

    ``options`` maps each option the SDK reads to its parser (which raises ``ValueError`` on
    a bad value); ``passthrough`` names the options the URL's driver reads, left in the URL.
    Anything else, or an option given twice, is refused with :class:`InvalidRequestError`
    naming the known options (and the closest one, for a typo). ``what`` names the URL in
    messages ("limits", "job store").
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    parsed: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in query:
        if name in seen:
            raise InvalidRequestError(
                f"option {name!r} is given twice in the {what} URL {redact_url(url)}: give it once",
                param=name,
            )
        seen.add(name)
        if name in options:
            try:
                parsed[name] = options[name](value)
            except ValueError as exc:
                shown = "***" if name.lower() in _SECRET_KEYS else repr(value)
                raise InvalidRequestError(
                    f"option {name}={shown} in the {what} URL is not valid: {exc}", param=name
                ) from None
        elif name in passthrough:
            rest.append((name, value))
        else:
            raise _unknown(name, url, what, [*options, *passthrough])
    clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    return clean, parsed


def _unknown(name: str, url: str, what: str, known: list[str]) -> InvalidRequestError:
    close = difflib.get_close_matches(name.lower().replace("-", "_"), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidRequestError(
        f"unknown option {name!r} in the {what} URL {redact_url(url)}{hint}: "
        f"the known options are {', '.join(sorted(known))}",
        param=name,
    )
