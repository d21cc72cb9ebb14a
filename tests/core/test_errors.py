"""The exception tree and the mapping of every response shape to a result or an error."""

from __future__ import annotations

import email.utils
import html
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from nanobanana_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    NanoBananaError,
    RateLimitError,
    ServerError,
)
from nanobanana_async.errors import parse_generate_response, parse_retry_after, redact

SECRET = "nb-secret-key-0123456789abcdef"
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def leaked_piece(text: str, size: int = 8) -> list[str]:
    """Every ``size``-character piece of the key that appears in ``text``."""
    pieces = {SECRET[i : i + size] for i in range(len(SECRET) - size + 1)}
    return sorted(p for p in pieces if p in text)


def parse(status: int, content: bytes, headers: dict[str, str] | None = None) -> tuple[str, ...]:
    return parse_generate_response(status, content, headers or {}, secret=SECRET)


def test_hierarchy() -> None:
    for cls in (
        InvalidRequestError,
        APIError,
        BadRequestError,
        InsufficientCreditsError,
        AuthenticationError,
        RateLimitError,
        ServerError,
        MalformedResponseError,
        APIConnectionError,
        APITimeoutError,
    ):
        assert issubclass(cls, NanoBananaError)
    assert issubclass(InvalidRequestError, ValueError)
    for cls in (BadRequestError, AuthenticationError, RateLimitError, ServerError):
        assert issubclass(cls, APIError)
    assert issubclass(InsufficientCreditsError, BadRequestError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert not issubclass(APIConnectionError, APIError)


# -- success ---------------------------------------------------------------------------------


def test_single_url_string_becomes_a_tuple() -> None:
    urls = parse(200, body({"code": 0, "message": "ok", "data": {"url": "https://i/1.png"}}))
    assert urls == ("https://i/1.png",)


def test_url_list_becomes_a_tuple_in_order() -> None:
    listed = ["https://i/1.png", "https://i/2.png", "https://i/3.png"]
    urls = parse(200, body({"code": 0, "message": "ok", "data": {"url": listed}}))
    assert urls == tuple(listed)


def test_success_without_message_is_fine() -> None:
    assert parse(200, body({"code": 0, "data": {"url": "https://i/1.png"}})) == ("https://i/1.png",)


# -- HTTP 200 with an error code -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "cls"),
    [
        (400, "invalid parameters", BadRequestError),
        (401, "invalid API key", AuthenticationError),
        (500, "server error", ServerError),
        (429, "slow down", RateLimitError),
        (503, "overloaded", ServerError),
        (400, "insufficient credits", InsufficientCreditsError),
    ],
)
def test_http_200_with_error_code(code: int, message: str, cls: type[APIError]) -> None:
    with pytest.raises(APIError) as info:
        parse(200, body({"code": code, "message": message}))
    assert type(info.value) is cls
    assert info.value.status_code == 200
    assert info.value.code == code
    assert info.value.message == message
    assert message in str(info.value)


@pytest.mark.parametrize("code", [1, 7, 1234, -1, 999])
def test_http_200_with_unknown_code_is_a_plain_api_error(code: int) -> None:
    with pytest.raises(APIError) as info:
        parse(200, body({"code": code, "message": "something odd"}))
    assert type(info.value) is APIError
    assert info.value.code == code
    assert info.value.status_code == 200
    assert info.value.message == "something odd"


def test_http_200_with_error_code_and_no_message() -> None:
    with pytest.raises(BadRequestError) as info:
        parse(200, body({"code": 400}))
    assert "400" in info.value.message


@pytest.mark.parametrize(
    "message",
    [
        "insufficient credits",
        "Insufficient credits",
        "INSUFFICIENT CREDITS",
        "Insufficient Credits: balance 0, need 8",
        "error: insufficient credit",
    ],
)
@pytest.mark.parametrize("status", [200, 400])
def test_insufficient_credits_in_any_case(message: str, status: int) -> None:
    with pytest.raises(InsufficientCreditsError) as info:
        parse(status, body({"code": 400, "message": message}))
    assert isinstance(info.value, BadRequestError)
    assert info.value.code == 400
    assert info.value.status_code == status
    assert info.value.message == message


def test_insufficient_credits_with_http_402() -> None:
    with pytest.raises(InsufficientCreditsError):
        parse(402, body({"code": 402, "message": "payment required"}))


# -- HTTP errors with the JSON body ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, 400, BadRequestError),
        (401, 401, AuthenticationError),
        (429, 429, RateLimitError),
        (500, 500, ServerError),
        (502, 500, ServerError),
        (503, 503, ServerError),
        # The HTTP status classifies when the body's code is not an HTTP-like one (but not
        # code 0: that says success, see below).
        (429, 1, RateLimitError),
        (503, 42, ServerError),
        (404, 404, APIError),
    ],
)
def test_http_error_with_json_body(status: int, code: int, cls: type[APIError]) -> None:
    with pytest.raises(APIError) as info:
        parse(status, body({"code": code, "message": "boom"}))
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.message == "boom"


# -- HTTP errors whose body is not JSON ------------------------------------------------------


def test_html_502_from_a_proxy() -> None:
    with pytest.raises(ServerError) as info:
        parse(502, HTML_502)
    assert info.value.status_code == 502
    assert info.value.code is None
    assert "502 Bad Gateway" in info.value.message
    assert "<" not in info.value.message


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (500, ServerError),
        (503, ServerError),
        (504, ServerError),
        (429, RateLimitError),
        (401, AuthenticationError),
        (400, BadRequestError),
        (403, APIError),
    ],
)
def test_empty_body_error(status: int, cls: type[APIError]) -> None:
    with pytest.raises(APIError) as info:
        parse(status, b"")
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.code is None
    assert "empty body" in info.value.message


@pytest.mark.parametrize(
    "content", [b"[1, 2]", b'"just a string"', b'{"code": "500"}', b'{"code": true}', b"\xff\xfe"]
)
def test_http_error_with_json_that_is_not_the_error_shape(content: bytes) -> None:
    with pytest.raises(ServerError) as info:
        parse(500, content)
    assert info.value.code is None


def test_long_html_body_is_trimmed() -> None:
    with pytest.raises(ServerError) as info:
        parse(503, b"<p>" + b"x" * 100_000 + b"</p>")
    assert len(info.value.message) < 500


# -- malformed successes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"OK",
        b"<html>fine</html>",
        b"{",
        body([]),
        body(None),
        body({"message": "ok"}),
        body({"code": "0", "data": {"url": "https://i/1.png"}}),
        body({"code": 0, "message": "ok"}),
        body({"code": 0, "data": None}),
        body({"code": 0, "data": []}),
        body({"code": 0, "data": {}}),
        body({"code": 0, "data": {"url": None}}),
        body({"code": 0, "data": {"url": ""}}),
        body({"code": 0, "data": {"url": 42}}),
        body({"code": 0, "data": {"url": {"0": "https://i/1.png"}}}),
        body({"code": 0, "data": {"url": []}}),
        body({"code": 0, "data": {"url": ["https://i/1.png", 2]}}),
        body({"code": 0, "data": {"url": ["https://i/1.png", None]}}),
        body({"code": 0, "data": {"url": ["https://i/1.png", ""]}}),
        body({"code": 0, "data": {"url": [["https://i/1.png"]]}}),
        body({"code": 0, "data": {"urls": ["https://i/1.png"]}}),
    ],
)
def test_malformed_success(content: bytes) -> None:
    with pytest.raises(MalformedResponseError) as info:
        parse(200, content)
    assert info.value.status_code == 200
    assert isinstance(info.value, APIError)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 400])
def test_an_error_status_around_a_success_body_is_a_success(status: int) -> None:
    # Issue 11, finding 6: the body's code decides. The server generated and charged; retrying
    # it as a server error paid twice.
    urls = ["https://i/1.png", "https://i/2.png"]
    assert parse(status, body({"code": 0, "message": "ok", "data": {"url": urls}})) == tuple(urls)
    assert parse(status, body({"code": 0, "data": {"url": urls[0]}})) == (urls[0],)


@pytest.mark.parametrize("status", [200, 401, 500])
@pytest.mark.parametrize("data", [None, {}, {"url": ""}, {"url": ["https://i/1.png", ""]}])
def test_code_zero_without_usable_urls_is_malformed_whatever_the_status(
    status: int, data: dict[str, object] | None
) -> None:
    # The body says it generated (and charged): never a retryable server error that would pay
    # again, always "may have been charged" (found by the money checker: a 502 around a
    # success body whose URLs were unusable was retried and paid twice).
    with pytest.raises(MalformedResponseError) as info:
        parse(status, body({"code": 0, "message": "ok", "data": data}))
    assert info.value.status_code == status


# -- the key never leaks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (200, body({"code": 401, "message": f"invalid API key {SECRET}"})),
        (401, body({"code": 401, "message": f"Bearer {SECRET} is not valid"})),
        (401, f"<html><body>bad key {SECRET}</body></html>".encode()),
        (502, f"upstream said: Authorization: Bearer {SECRET}".encode()),
        (200, f"not json but has {SECRET}".encode()),
        (200, body({"code": 0, "data": {"url": None}, "echo": SECRET})),
        # The key straddles the point where the snippet of a long body is cut.
        (502, b"x" * 190 + SECRET.encode() + b"y" * 50),
        (200, b"x" * 190 + SECRET.encode() + b"y" * 50),
    ],
)
def test_key_is_redacted_from_messages(status: int, content: bytes) -> None:
    with pytest.raises(APIError) as info:
        parse(status, content)
    for text in (str(info.value), info.value.message, repr(info.value), repr(info.value.args)):
        assert SECRET not in text
        # Not even a recognisable piece of it.
        assert not leaked_piece(text), leaked_piece(text)


# A key with the characters encoders treat differently: "/" (kept by urllib.parse.quote),
# "+" and "=" (base64), "_" and "~" (never encoded), and letters in both cases.
SLASHED = "sk-Live/AbC+dE=fGh_0123~456789/xyz"


def _entities(text: str) -> str:
    return "".join(f"&#{ord(c)};" if not c.isalnum() else c for c in text)


ENCODINGS: list[tuple[str, Callable[[str], str]]] = [
    ("verbatim", lambda k: k),
    ("upper", str.upper),
    ("lower", str.lower),
    ("quote, keeping /", quote),
    ("quote, nothing safe", lambda k: quote(k, safe="")),
    ("quote, lower-case hex", lambda k: quote(k, safe="").lower()),
    ("quote_plus", quote_plus),
    ("quote_plus, keeping /", lambda k: quote_plus(k, safe="/")),
    ("quoted twice", lambda k: quote(quote(k))),
    ("quote, keeping + and =", lambda k: quote(k, safe="+=")),
    ("json", lambda k: json.dumps(k)[1:-1]),
    ("json, escaped /", lambda k: json.dumps(k)[1:-1].replace("/", "\\/")),
    ("json inside json", lambda k: json.dumps(json.dumps(k)[1:-1])[1:-1]),
    ("json unicode escapes", lambda k: "".join(f"\\u{ord(c):04x}" for c in k)),
    ("html.escape", html.escape),
    ("html character references", _entities),
    ("python bytes repr", lambda k: repr(k.encode())[2:-1]),
]


@pytest.mark.parametrize("encode", [e for _, e in ENCODINGS], ids=[n for n, _ in ENCODINGS])
def test_every_encoding_a_server_may_echo_is_redacted(encode: Callable[[str], str]) -> None:
    echoed = encode(SLASHED)
    assert redact(f"rejected key [{echoed}] at 12:00", SLASHED) == "rejected key [***] at 12:00"
    with pytest.raises(APIError) as info:
        parse_generate_response(
            400, body({"code": 400, "message": f"bad key {echoed}"}), {}, secret=SLASHED
        )
    assert echoed not in str(info.value)
    assert "***" in str(info.value)


def test_redaction_leaves_other_text_alone() -> None:
    text = "sk-Live%2FAbC is not the key, nor is AbC+dE=fGh alone: 0123~456789"
    assert redact(text, SLASHED) == text
    assert redact(text, None) == text


def test_str_shows_status_and_code_when_they_differ() -> None:
    error = BadRequestError("bad size", status_code=200, code=400)
    assert "bad size" in str(error)
    assert "200" in str(error)
    assert "400" in str(error)
    same = ServerError("down", status_code=500, code=500)
    assert str(same).count("500") == 1


def test_connection_error_fields() -> None:
    error = APITimeoutError("timed out", may_have_been_charged=True)
    assert error.may_have_been_charged is True
    assert error.message == "timed out"
    assert APIConnectionError("refused").may_have_been_charged is False


# -- Retry-After -----------------------------------------------------------------------------


def test_retry_after_on_error() -> None:
    with pytest.raises(RateLimitError) as info:
        parse(429, body({"code": 429, "message": "slow"}), {"retry-after": "3"})
    assert info.value.retry_after == 3.0


def test_retry_after_ms_on_error() -> None:
    with pytest.raises(RateLimitError) as info:
        parse(429, b"", {"retry-after-ms": "1500"})
    assert info.value.retry_after == 1.5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "-5", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    value = parse_retry_after({"retry-after": date}, now=now)
    assert value is not None
    assert 28.0 <= value <= 31.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0
