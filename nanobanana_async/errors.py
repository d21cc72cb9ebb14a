"""The exception tree, and the one mapping from an HTTP response to a result or an error."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "HTTPExchange",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "LimitsUnavailableError",
    "MalformedResponseError",
    "NanoBananaError",
    "RateLimitError",
    "ServerError",
    "error_for_status",
    "may_have_charged",
    "parse_generate_response",
    "parse_retry_after",
    "redact",
]


class NanoBananaError(Exception):
    """Base class of every error this SDK raises: the one class to catch for any failure,
    whether the API answered (:class:`APIError`) or not (:class:`APIConnectionError`)."""


_MASKED = "Bearer ***"


class HTTPExchange:
    """The request an error is about, and the answer if one came, as an error shows them.

    Plain data, kept only when a call fails (the requests that succeed never build it): the
    ``httpx.Request`` and ``httpx.Response`` are built from it on first access. The
    ``Authorization`` header is masked and the API key redacted from the body, whatever
    encoding the server echoed it in.
    """

    __slots__ = (
        "_request",
        "_response",
        "content",
        "method",
        "request_content",
        "request_headers",
        "response_headers",
        "status_code",
        "url",
    )

    def __init__(
        self,
        method: str,
        url: str,
        request_headers: Iterable[tuple[str, str]],
        request_content: bytes,
        *,
        status_code: int | None = None,
        response_headers: Iterable[tuple[str, str]] = (),
        content: bytes | None = None,
        secret: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.request_headers = [
            (name, _MASKED if name.lower() == "authorization" else value)
            for name, value in request_headers
        ]
        self.request_content = request_content
        self.status_code = status_code
        self.response_headers = [
            (name, value)
            for name, value in response_headers
            # The body kept is the decoded one: a response built with this header would be
            # decoded a second time.
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        if content is not None and secret:
            text = content.decode("utf-8", "replace")
            if _secret_pattern(secret).search(text):
                content = redact(text, secret).encode()
        self.content = content
        self._request: httpx.Request | None = None
        self._response: httpx.Response | None = None

    def __repr__(self) -> str:
        status = "no answer" if self.status_code is None else f"HTTP {self.status_code}"
        return f"<HTTPExchange {self.method} {self.url}: {status}>"

    @property
    def request(self) -> httpx.Request:
        """The request, as an ``httpx.Request`` (``Authorization`` masked)."""
        if self._request is None:
            import httpx

            self._request = httpx.Request(
                self.method, self.url, headers=self.request_headers, content=self.request_content
            )
        return self._request

    @property
    def response(self) -> httpx.Response | None:
        """The answer, as a read ``httpx.Response``; None when none came."""
        if self._response is None and self.status_code is not None:
            import httpx

            self._response = httpx.Response(
                self.status_code,
                headers=self.response_headers,
                content=self.content or b"",
                request=self.request,
            )
        return self._response

    @property
    def body(self) -> object | None:
        """The answer's body: its JSON parsed, else its text; None when no body was read."""
        if self.content is None:
            return None
        text = self.content.decode("utf-8", "replace")
        try:
            parsed: object = json.loads(text)
        except (ValueError, RecursionError):
            return text
        return parsed

    @property
    def request_id(self) -> str | None:
        """The answer's ``x-request-id`` header, if it sent one."""
        for name, value in self.response_headers:
            if name.lower() == "x-request-id":
                return value
        return None


class _HTTPDetails:
    # What openai-python's errors carry, read from the exchange the SDK attached (None for an
    # error built by hand, or one raised before any request was made).
    exchange: HTTPExchange | None = None

    @property
    def request(self) -> httpx.Request | None:
        """The ``httpx.Request`` that failed (``Authorization`` masked), if one was made."""
        return None if self.exchange is None else self.exchange.request


class InvalidRequestError(NanoBananaError, ValueError):
    """The request is invalid on the client side; nothing was sent.

    ``param`` names the offending field when there is one.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class APIError(_HTTPDetails, NanoBananaError):
    """The API answered with an error.

    ``status_code`` is the HTTP status, ``code`` the ``code`` field of the JSON body (``None``
    when the body was not JSON), ``message`` the server's message, and ``retry_after`` the
    delay in seconds the server asked for, if any. As with openai-python's
    ``APIStatusError``: ``request`` and ``response`` are the ``httpx`` objects of the failed
    attempt, ``body`` its parsed JSON (else its text) and ``request_id`` its ``x-request-id``
    header; the key is masked or redacted in all of them.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        code = "" if self.code is None or self.code == self.status_code else f", code {self.code}"
        return f"{self.message} (HTTP {self.status_code}{code})"

    @property
    def response(self) -> httpx.Response | None:
        """The answer as a read ``httpx.Response`` (``.json()``, ``.headers``, ``.text``)."""
        return None if self.exchange is None else self.exchange.response

    @property
    def body(self) -> object | None:
        """The answer's body: its JSON parsed, else its text; None when it was not read (a
        body over the size cap)."""
        return None if self.exchange is None else self.exchange.body

    @property
    def request_id(self) -> str | None:
        """The answer's ``x-request-id`` header (quote it to the API's support), if any."""
        return None if self.exchange is None else self.exchange.request_id


class BadRequestError(APIError):
    """The API rejected the parameters (code 400). Retrying will not help."""


class InsufficientCreditsError(BadRequestError):
    """The account has too few credits for this request. Top up before retrying."""


class AuthenticationError(APIError):
    """The API key was rejected (code 401). Check ``NANOBANANA_API_KEY`` or ``api_key=``."""


class RateLimitError(APIError):
    """Too many requests (HTTP 429). ``retry_after`` says how long the server asked to wait."""


class ServerError(APIError):
    """The server or a proxy in front of it failed (5xx). Retried automatically."""


class MalformedResponseError(APIError):
    """A success status with a body that is not the documented shape.

    The server may have generated (and charged for) images, so this is not retried.
    """


class APIConnectionError(_HTTPDetails, NanoBananaError):
    """The request did not get an answer: connection failed, dropped, or timed out.

    ``may_have_been_charged`` is true when the request had been sent before the failure: the
    server may have generated and charged for it, so it is retried only on request
    (``retry_ambiguous=True``). ``request`` is the ``httpx.Request`` that failed.
    """

    def __init__(self, message: str, *, may_have_been_charged: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.may_have_been_charged = may_have_been_charged


_NOT_RETRIED = (
    "so it was not retried. Pass retry_ambiguous=True to retry such failures (at the risk of "
    "paying twice)."
)


def lost_answer(target: str, detail: str) -> str:
    """The message of a failure after the request to ``target`` was sent (by default such a
    failure is not retried: :func:`say_retried` tells otherwise)."""
    return (
        f"the connection to {target} failed after the request was sent ({detail}); the server "
        f"may have generated and charged for it, {_NOT_RETRIED}"
    )


def say_retried(exc: APIConnectionError, attempt: int, attempts: int) -> None:
    """``exc``, a lost answer, met ``retry_ambiguous=True``: its message says that such
    failures are retried (``exc`` was attempt ``attempt`` of at most ``attempts``), not that
    it was not retried."""
    if exc.message.endswith(_NOT_RETRIED):
        exc.message = exc.message[: -len(_NOT_RETRIED)] + (
            "and retry_ambiguous=True retries such failures (at the risk of paying twice): "
            f"this was attempt {attempt} of at most {attempts}."
        )
        exc.args = (exc.message,)


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class LimitsUnavailableError(NanoBananaError):
    """The shared limits (``RedisLimits``) could not be consulted: nothing was sent.

    Redis was unreachable, too slow, or lost the namespace's state. The SDK fails closed: it
    never falls back to limits of its own process. ``url`` is where the limits live, without
    credentials.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class BudgetExceededError(NanoBananaError):
    """The client's ``max_credits`` (``LocalLimits`` or ``RedisLimits``) has no room for this
    request, and never will: nothing was sent. A batch reports such jobs as ``skipped``."""


_MAX_SNIPPET = 200
_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def _snippet(content: bytes, secret: str | None = None) -> str:
    # Redact before cutting: a key straddling the cut would otherwise leak its first part.
    text = redact(content.decode("utf-8", "replace"), secret)[: _MAX_SNIPPET * 8]
    text = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    if len(text) > _MAX_SNIPPET:
        text = text[:_MAX_SNIPPET] + "..."
    return text or "empty body"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The delay in seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            pass
        else:
            if value >= 0 and value == value:  # rejects NaN
                return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            import email.utils  # HTTP dates are rare: not imported with the SDK

            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return value if value >= 0 and value == value else None


def _error_for(
    kind: int,
    status_code: int,
    code: int | None,
    message: str,
    retry_after: float | None,
) -> APIError:
    cls: type[APIError]
    if kind == 402 or (kind < 500 and "insufficient credit" in message.lower()):
        cls = InsufficientCreditsError
    elif kind == 400:
        cls = BadRequestError
    elif kind == 401:
        cls = AuthenticationError
    elif kind == 429:
        cls = RateLimitError
    elif kind >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(message, status_code=status_code, code=code, retry_after=retry_after)


# Named HTML entities a server's escaping may use for the characters of a key.
_ENTITIES = {"&": ("amp",), "<": ("lt",), ">": ("gt",), '"': ("quot",), "'": ("apos",)}


def _char_forms(char: str) -> str:
    """A pattern for one character of a secret in any encoding a server may echo it in."""
    code = ord(char)
    forms = [
        re.escape(char),
        f"%(?:25)*{code:02x}",  # percent-encoded, once or more (quote, quote_plus, any safe=)
        f"\\\\+u0*{code:x}",  # JSON or JavaScript \uXXXX, escaped once or more
        f"\\\\+x{code:02x}",  # a Python or C \xXX
        f"&(?:amp;)*#(?:0*{code}|x0*{code:x});",  # an HTML character reference
    ]
    forms += [f"&(?:amp;)*{name};" for name in _ENTITIES.get(char, ())]
    if not char.isalnum():
        forms.append(f"\\\\+{re.escape(char)}")  # backslash-escaped (JSON's \/ and \")
    return "(?:" + "|".join(forms) + ")"


@functools.lru_cache(maxsize=8)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    # A server may echo the key transformed: upper- or lower-cased, percent-encoded with any
    # set of characters left alone (urllib.parse.quote keeps "/"), escaped for JSON, HTML or
    # a string literal, or several of these at once. Each character of the key matches any of
    # its encodings, so every mix of them is caught; any one in a log line is the key itself.
    return re.compile("".join(_char_forms(char) for char in secret), re.IGNORECASE)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every form of ``secret`` the server might echo replaced by ``***``."""
    return _secret_pattern(secret).sub("***", text) if secret else text


def error_for_status(status_code: int, headers: Mapping[str, str], detail: str) -> APIError:
    """The :class:`APIError` for an HTTP error status whose body says nothing usable."""
    message = f"HTTP {status_code} {detail}"
    return _error_for(status_code, status_code, None, message, parse_retry_after(headers))


def parse_generate_response(
    status_code: int,
    content: bytes,
    headers: Mapping[str, str],
    *,
    secret: str | None = None,
) -> tuple[str, ...]:
    """The image URLs of a generate response, or raise the matching :class:`APIError`.

    Handles an HTTP 200 whose body has ``code != 0``, an HTTP error with the JSON body, an
    HTTP error whose body is not JSON (a proxy's HTML page, an empty body), and a success
    status whose body is malformed. ``secret`` is redacted from every message.
    """
    retry_after = parse_retry_after(headers)
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        code = None

    if code is None:
        if status_code >= 400:
            raise error_for_status(
                status_code,
                headers,
                redact(f"with an unexpected body: {_snippet(content, secret)}", secret),
            )
        raise MalformedResponseError(
            redact(
                "the API answered with a body that is not the documented JSON: "
                + _snippet(content, secret),
                secret,
            ),
            status_code=status_code,
        )

    assert isinstance(body, dict)
    raw_message = body.get("message")
    message = redact(raw_message if isinstance(raw_message, str) else f"error code {code}", secret)
    if code != 0:
        # The body's code is the API's own classification; the HTTP status is the fallback for
        # codes the API does not document.
        kind = code if 400 <= code <= 599 else (status_code if status_code >= 400 else 0)
        raise _error_for(kind, status_code, code, message, retry_after)
    # code 0 is the API saying it generated and charged, whatever the HTTP status says: a 5xx
    # around a success body is a success, never a failure to retry and pay for again, and a
    # code-0 body without usable URLs is malformed (may have been charged), not a server error.
    data = body.get("data")
    url = data.get("url") if isinstance(data, dict) else None
    if isinstance(url, str) and url:
        return (url,)
    if isinstance(url, list) and url and all(isinstance(u, str) and u for u in url):
        return tuple(url)
    raise MalformedResponseError(
        redact(
            f"the API reported success without usable image URLs: {_snippet(content, secret)}",
            secret,
        ),
        status_code=status_code,
        code=code,
    )


def may_have_charged(outcome: BaseException) -> bool:
    """Whether the server may have charged for an attempt that ended with ``outcome``.

    Released (False) only when the server cannot have charged: a clear error answer, or a
    request that never left. A success status whose body could not be read
    (:class:`MalformedResponseError`), a connection lost after sending, and anything else
    that cut an attempt short (a cancellation, an unexpected exception) keep it.
    """
    if isinstance(outcome, APIConnectionError):
        return outcome.may_have_been_charged
    if isinstance(outcome, MalformedResponseError):
        return True
    return not isinstance(outcome, NanoBananaError)
