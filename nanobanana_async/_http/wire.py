"""HTTP/1.1 on the wire without h11, for the common case only: a request's bytes, a plain head.

The h11 pool's direct path (``H11Transport.post``) writes a generate request itself and reads
the answer servers nearly always give (``HTTP/1.1``, a final status with a body, one
``Content-Length``, no ``Transfer-Encoding``) with the grammar h11 applies to it
(``h11/_abnf.py``): what this module accepts, h11 accepts and reads the same way. Anything else
(another version, 1xx, 204 or 304, chunked or close-delimited bodies, folded or malformed
lines, several lengths) makes :func:`parse_head` return None and h11 reads the answer, so
unusual answers are parsed (or refused) exactly as on h11's own path. h11's per-event
validation was about a fifth of a request's CPU under Trio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "MAX_HEAD",
    "IllegalHeader",
    "PlainHead",
    "ResponseHeaders",
    "parse_head",
    "request_bytes",
]

# h11's grammar (h11/_abnf.py, h11 0.14 to 0.16).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD_VALUE = rb"(?:%s+(?:[ \t]+%s+)*)?" % (_FIELD_VCHAR, _FIELD_VCHAR)
_HEADER_LINE = re.compile(rb"(%s):[ \t]*(%s)[ \t]*" % (_TOKEN, _FIELD_VALUE))
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: (?:[ \t]|%s)*)?" % _FIELD_VCHAR)
_VALID_NAME = re.compile(_TOKEN)
_VALID_VALUE = re.compile(_FIELD_VALUE)
#: h11's default ``max_incomplete_event_size``: a longer head is h11's to refuse.
MAX_HEAD = 16 * 1024
_CONTENT_LENGTH_MAX_DIGITS = 20  # h11's


class ResponseHeaders(dict[str, str]):
    """A response's headers: lower-case names, repeated ones joined with ", " (as
    ``httpx.Headers.get`` gives them); lookups ignore case, as on the other paths."""

    __slots__ = ()

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class PlainHead:
    """A plain answer's head: what the direct path needs to read its body."""

    __slots__ = ("encoded", "headers", "keep_alive", "length", "raw", "status")

    def __init__(
        self,
        status: int,
        headers: ResponseHeaders,
        raw: list[tuple[bytes, bytes]],
        length: int,
        keep_alive: bool,
        encoded: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.length = length
        self.keep_alive = keep_alive
        self.encoded = encoded


def parse_head(head: bytes) -> PlainHead | None:
    """The head of a plain answer (without its final blank line), or None for anything else.

    None when h11 must decide: another version, a status below 200, 204 or 304, no
    ``Content-Length`` or more than one, ``Transfer-Encoding``, or a line h11 would refuse or
    unfold.
    """
    lines = head.split(b"\r\n")
    status_match = _STATUS_LINE.fullmatch(lines[0])
    if status_match is None:
        return None
    status = int(status_match[1])
    if status < 200 or status == 204 or status == 304:
        return None
    headers = ResponseHeaders()
    raw: list[tuple[bytes, bytes]] = []
    length: int | None = None
    keep_alive = True
    encoded = False
    for line in lines[1:]:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return None
        raw_name, raw_value = match[1].lower(), match[2]
        if raw_name == b"content-length":
            if (
                length is not None
                or not raw_value.isdigit()
                or len(raw_value) > _CONTENT_LENGTH_MAX_DIGITS
            ):
                return None
            length = int(raw_value)
        elif raw_name == b"transfer-encoding":
            return None
        elif raw_name == b"connection":
            if b"close" in (token.strip() for token in raw_value.lower().split(b",")):
                keep_alive = False
        elif raw_name == b"content-encoding":
            encoded = True
        raw.append((raw_name, raw_value))
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        previous = dict.get(headers, name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    if length is None:
        return None
    return PlainHead(status, headers, raw, length, keep_alive, encoded)


_checked_names: set[str] = set()


class IllegalHeader(ValueError):
    """A request header h11 would refuse to send (the message never quotes the value)."""


def request_bytes(target: bytes, host: bytes, headers: Mapping[str, str], body: bytes) -> bytes:
    """``POST target`` with ``Host``, ``headers`` and ``Content-Length``: the bytes to send.

    Names and values are checked against h11's grammar (:class:`IllegalHeader` when one fails:
    a value may be the API key, so the message names the header only); a value that is not
    ASCII raises ``UnicodeEncodeError``, as httpx does when it builds a request.
    """
    parts = [b"POST ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers.items():
        if name not in _checked_names:
            if not name.isascii() or _VALID_NAME.fullmatch(name.encode("ascii")) is None:
                raise IllegalHeader(f"Illegal header name {name!r}")
            if len(_checked_names) < 64:
                _checked_names.add(name)
        raw = value.encode("ascii")
        # Printable ASCII without blanks at either end is always valid (h11's grammar allows
        # no control characters and no leading or trailing whitespace); anything else is
        # decided by the grammar itself.
        if not (value.isprintable() and value[:1] != " " and value[-1:] != " ") and (
            _VALID_VALUE.fullmatch(raw) is None
        ):
            raise IllegalHeader(f"Illegal header value in {name}")
        parts += (name.encode("ascii"), b": ", raw, b"\r\n")
    parts += (b"Content-Length: ", b"%d" % len(body), b"\r\n\r\n", body)
    return b"".join(parts)
