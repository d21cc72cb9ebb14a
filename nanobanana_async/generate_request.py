"""One generate request: its body and key, sent on the cheapest path that applies, read capped.

The paths, cheapest first: :class:`FastTransport`'s direct post (aiohttp on asyncio, the SDK's
own h11 pool elsewhere), a caller's ``transport=`` handed the request directly, httpx's client
``send`` (a caller's ``http_client=``, a mock patched into httpx, proxies from the
environment). Every path gives the same status, headers and body, or the same httpx error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import httpx

from ._http.body import BodyTooLarge, declared_length, read_capped
from ._http.failures import connection_error, request_was_sent
from ._http.fast import FastTransport, is_mocked
from ._version import __version__
from .errors import APIError, MalformedResponseError, error_for_status, parse_generate_response
from .telemetry import CallTelemetry

__all__ = [
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "GenerateRequests",
    "json_bytes",
    "new_idempotency_key",
    "too_large",
]

logger = logging.getLogger("nanobanana_async")

USER_AGENT = f"nanobanana-async/{__version__}"
MAX_RESPONSE_BYTES = 1 << 20

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


class GenerateRequests:
    """Sends a client's generate requests: one :meth:`post` per attempt."""

    __slots__ = (
        "_api_key",
        "_client_headers",
        "_fast",
        "_light",
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
        self._client_headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in client_headers.raw
        ]

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
                    response = await self._send_light(client, light, body, headers)
                else:
                    request = client.build_request(
                        "POST", self._url, content=body, headers=headers, timeout=self._timeout
                    )
                    response = await client.send(request, stream=True)
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
            raise connection_error(exc, target, sent=request_was_sent(exc)) from None
        except BodyTooLarge as exc:
            raise too_large(exc.status_code, exc.headers, MAX_RESPONSE_BYTES) from None
        logger.debug("POST %s -> HTTP %d", target, status)
        if call is not None:
            call.responded(status, response_headers)
        return parse_generate_response(status, content, response_headers, secret=self._api_key)

    async def _send_light(
        self,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport,
        body: bytes,
        headers: dict[str, str],
    ) -> httpx.Response:
        """The request ``client.send`` would make, handed to the caller's transport directly.

        Only for the client the SDK built around a caller's ``transport=``: no auth, event
        hooks, redirects or proxies to apply, nothing mocked, no cookies held. The same
        request (the client's headers, then the call's, which name none of them; the URL; the
        timeout extension) without ``build_request`` and ``send``'s bookkeeping, which were a
        third of a job's CPU in-process. Cookies a response sets are kept; once the client
        holds some, requests go through ``send`` again, which sends them.
        """
        request = httpx.Request(
            "POST",
            self._url,
            headers=[*self._client_headers, *headers.items()],
            content=body,
            extensions={"timeout": self._timeout_spec},
        )
        response = await transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            client.cookies.extract_cookies(response)
        return response
