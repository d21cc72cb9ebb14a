"""One generate request: body, key and timeout, sent on the cheapest path that applies, read
capped.

The paths, cheapest first: :class:`FastTransport`'s direct post (the SDK's own h11 pool, on
asyncio and Trio), a caller's ``transport=`` handed the request directly, httpx's client
``send`` (a caller's ``http_client=``, a mock patched into httpx, proxies from the
environment). Every path gives the same status, headers and body, or the same httpx error.
A request that fails is described on its error (:class:`~nanobanana_async.errors.HTTPExchange`),
built only then: the requests that succeed pay nothing for it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Self

import httpx

from ._http.body import BodyTooLarge, declared_length, read_capped
from ._http.failures import connection_error, request_was_sent
from ._http.fast import FastTransport, is_mocked
from ._http.resend import NO_ANSWER, ReuseTrace
from .endpoint import USER_AGENT, user_agent_for
from .errors import (
    APIError,
    HTTPExchange,
    InvalidRequestError,
    MalformedResponseError,
    error_for_status,
    parse_generate_response,
)
from .telemetry import CallTelemetry
from .validation import positive_problem

__all__ = [
    "MAX_RESPONSE_BYTES",
    "GenerateRequests",
    "checked_timeout",
    "json_bytes",
    "new_idempotency_key",
    "too_large",
]

logger = logging.getLogger("nanobanana_async")

MAX_RESPONSE_BYTES = 1 << 20
# httpx's own transport (httpcore) chooses the connection: a resend (Go's rule,
# _http/resend.py) may meet another stale one, and is then made again, this many times at most.
_MAX_RESENDS = 3

# What the SDK's own httpx client sends besides, minus compression: a small JSON object is not
# worth compressing (a server that compresses anyway is decoded as httpx would, _http/encoding).
_DIRECT_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "*/*",
    "Accept-Encoding": "identity",
}

# Compact UTF-8, as httpx encodes json=; one encoder (json.dumps builds one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_bytes(body: dict[str, Any]) -> bytes:
    """``body`` as the request's bytes, as httpx encodes ``json=``."""
    return _JSON.encode(body).encode()


def new_idempotency_key() -> str:
    """What ``uuid.uuid4().hex`` gives (32 hex digits, the version 4 and variant bits set),
    without building a UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def checked_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    """The timeout as httpx takes it; a plain number bounds connect, read and write.

    Waiting for a pooled connection still never times out (see client.DEFAULT_TIMEOUT). Each
    bound must be a positive finite number or None: NaN or a negative value would only fail
    later, deep in a request.
    """
    spec = timeout if isinstance(timeout, httpx.Timeout) else None
    if spec is None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidRequestError(
                f"timeout must be a number of seconds or an httpx.Timeout, got {timeout!r}",
                param="timeout",
            )
        spec = httpx.Timeout(timeout, pool=None)
    for name, value in spec.as_dict().items():
        problem = positive_problem(value, unit="number of seconds", none=True)
        if problem is not None:
            raise InvalidRequestError(f"timeout {name} {problem}", param="timeout")
    return spec


def too_large(status_code: int, headers: Mapping[str, str], limit: int) -> APIError:
    """The error for an answer whose body is over ``limit`` bytes (not read)."""
    # An error status still classifies the failure (a proxy's huge 502 page is a retryable
    # server error); only a success status with an oversized body is malformed.
    detail = f"with a body larger than the {limit}-byte cap (not read)"
    if status_code >= 400:
        return error_for_status(status_code, headers, detail)
    return MalformedResponseError(
        f"response refused: HTTP {status_code} {detail}", status_code=status_code
    )


_DIRECT, _LIGHT, _SEND = 0, 1, 2  # the paths of GenerateRequests.post
_Send = Callable[
    [httpx.AsyncClient, bytes, dict[str, str], ReuseTrace | None], Awaitable[httpx.Response]
]


def _pairs(headers: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    # Every field, repeated ones included, whichever transport's headers these are.
    return headers.multi_items() if isinstance(headers, httpx.Headers) else headers.items()


class GenerateRequests:
    """Sends a client's generate requests: one :meth:`post` per attempt."""

    __slots__ = (
        "_api_key",
        "_client_headers",
        "_fast",
        "_light",
        "_reference",
        "_target",
        "_timeout",
        "_timeout_spec",
        "_url",
    )

    def __init__(
        self,
        url: httpx.URL,
        timeout: httpx.Timeout,
        api_key: str,
        *,
        fast: FastTransport | None,
        light: httpx.AsyncBaseTransport | None,
        client_headers: httpx.Headers,
    ) -> None:
        """``fast`` is the SDK's own transport, if it is the one in use; ``light`` a caller's
        ``transport=`` inside the SDK's own client, with that client's ``client_headers``."""
        self._url = url
        self._target = str(url)
        self._timeout = timeout
        self._timeout_spec: dict[str, float | None] = timeout.as_dict()  # as requests carry it
        self._api_key = api_key  # redacted from what an error quotes of the answer
        self._fast = fast
        self._light = light
        # httpx's own transport resends by Go's rule only when told (ReuseTrace).
        self._reference = isinstance(light, httpx.AsyncHTTPTransport)
        self._client_headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in client_headers.raw
        ]

    def with_timeout(self, timeout: httpx.Timeout) -> Self:
        """The same requests under another timeout."""
        copy = object.__new__(type(self))
        for name in self.__slots__:
            setattr(copy, name, getattr(self, name))
        copy._timeout = timeout
        copy._timeout_spec = timeout.as_dict()
        return copy

    async def post(
        self,
        client: httpx.AsyncClient,
        body: bytes,
        headers: dict[str, str],
        call: CallTelemetry | None = None,
    ) -> tuple[str, ...]:
        """Send one attempt through ``client`` (or around it, on the direct paths): the image
        URLs of a success, else the error the answer or the failure maps to."""
        target = self._target
        path = _DIRECT
        try:
            fast = self._fast
            if fast is not None and fast.can_post_directly():
                status, response_headers, content = await fast.post_directly(
                    target,
                    body,
                    {**headers, **_DIRECT_HEADERS},
                    self._timeout_spec,
                    MAX_RESPONSE_BYTES,
                )
            else:
                light = self._light
                if light is not None and not client.cookies and not is_mocked():
                    path = _LIGHT
                    if self._reference:
                        response = await self._resending(self._send_light, client, body, headers)
                    else:  # not httpcore: resends by itself (FastTransport's paths) or cannot
                        response = await self._send_light(client, body, headers, None)
                else:
                    path = _SEND
                    response = await self._resending(self._send, client, body, headers)
                try:
                    content = await read_capped(
                        response.aiter_bytes(),
                        declared_length(response.headers.get("content-length")),
                        MAX_RESPONSE_BYTES,
                        response.status_code,
                        response.headers,
                    )
                finally:
                    await response.aclose()
                status, response_headers = response.status_code, response.headers
        except httpx.HTTPError as exc:
            failure = connection_error(exc, target, sent=request_was_sent(exc))
            failure.exchange = self._exchange(path, client, body, headers)
            raise failure from None
        except BodyTooLarge as exc:
            refused = too_large(exc.status_code, exc.headers, MAX_RESPONSE_BYTES)
            refused.exchange = self._exchange(
                path, client, body, headers, exc.status_code, exc.headers
            )
            raise refused from None
        logger.debug("POST %s -> HTTP %d", target, status)
        if call is not None:
            call.responded(status, response_headers)
        try:
            return parse_generate_response(status, content, response_headers, secret=self._api_key)
        except APIError as exc:
            exc.exchange = self._exchange(
                path, client, body, headers, status, response_headers, content
            )
            raise

    def _exchange(
        self,
        path: int,
        client: httpx.AsyncClient,
        body: bytes,
        headers: dict[str, str],
        status: int | None = None,
        response_headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> HTTPExchange:
        """What an error shows of a failed attempt: the request as the path sent it."""
        sent: Iterable[tuple[str, str]]
        if path == _DIRECT:
            sent = {**headers, **_DIRECT_HEADERS}.items()
        elif path == _LIGHT:
            sent = [*self._client_headers, *headers.items()]
        else:
            merged = httpx.Headers(client.headers)
            merged.update({**headers, **user_agent_for(client.headers)})
            sent = merged.multi_items()
        return HTTPExchange(
            "POST",
            self._target,
            sent,
            body,
            status_code=status,
            response_headers=() if response_headers is None else _pairs(response_headers),
            content=content,
            secret=self._api_key,
        )

    async def _resending(
        self, send: _Send, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """``send`` (an httpx path), made again while it fails on a reused connection before
        any answer (Go's rule, _http/resend.py), as far as httpx's own transport tells it
        (another transport says nothing of reuse: its failures stand)."""
        resends = 0
        while True:
            trace = ReuseTrace()
            try:
                return await send(client, body, headers, trace)
            except NO_ANSWER:
                if not trace.reused or resends >= _MAX_RESENDS:
                    raise
            resends += 1
            logger.debug("POST %s: a reused connection closed under it; sent again", self._target)

    async def _send(
        self,
        client: httpx.AsyncClient,
        body: bytes,
        headers: dict[str, str],
        trace: ReuseTrace | None,
    ) -> httpx.Response:
        """Through ``client.send``: a caller's ``http_client`` (named the SDK's user agent
        unless it names its own), a mock, proxies."""
        request = client.build_request(
            "POST",
            self._url,
            content=body,
            headers={**headers, **user_agent_for(client.headers)},
            timeout=self._timeout,
            extensions={"trace": trace},
        )
        return await client.send(request, stream=True)

    async def _send_light(
        self,
        client: httpx.AsyncClient,
        body: bytes,
        headers: dict[str, str],
        trace: ReuseTrace | None,
    ) -> httpx.Response:
        """The request ``client.send`` would make, handed to the caller's transport directly.

        Only for the client the SDK built around a caller's ``transport=``: no auth, event
        hooks, redirects or proxies to apply, nothing mocked, no cookies held. The same
        request (the client's headers, then the call's, which name none of them; the URL; the
        timeout extension) without ``build_request`` and ``send``'s bookkeeping, which were a
        third of a job's CPU in-process. Cookies a response sets are kept; once the client
        holds some, requests go through ``send`` again, which sends them.
        """
        extensions: dict[str, Any] = {"timeout": self._timeout_spec}
        if trace is not None:
            extensions["trace"] = trace
        request = httpx.Request(
            "POST",
            self._url,
            headers=[*self._client_headers, *headers.items()],
            content=body,
            extensions=extensions,
        )
        assert self._light is not None
        response = await self._light.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            client.cookies.extract_cookies(response)
        return response
