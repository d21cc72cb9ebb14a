"""The SDK's default HTTP transport: an httpx transport that stays fast at high concurrency.

httpx's own pool (httpcore 1.0) re-assigns every queued request to every connection on each
change, so its bookkeeping grows with the square of the connections in one pool: at a few
hundred concurrent requests the client spends its CPU there, not on I/O (DESIGN.md section 7).
:class:`FastTransport` keeps the httpx interface (``httpx.AsyncClient``, ``http_client=``,
respx) and picks, per request:

- on asyncio, when ``aiohttp`` is installed (extra ``nanobanana-async[aiohttp]``): one
  ``aiohttp`` connection pool, with aiohttp's failures mapped to the httpx exceptions httpx
  itself would raise for the same situation (``ConnectError``, ``ConnectTimeout``,
  ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``);
- otherwise (Trio, or no aiohttp): :class:`~nanobanana_async._h11_transport.H11Transport`, a
  lean HTTP/1.1 transport (h11 over anyio streams, one plain pool of idle connections), with
  the same error mapping. httpcore costs about a millisecond of CPU per request under Trio,
  even in small pools; this path costs about half as much.

When a mock has patched httpx's or httpcore's transport (respx with either mocker,
pytest-httpx), both paths step aside and the request goes through httpx's own transport, where
the mock sees it: a test suite never sends a real request because of this module.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from ._h11_transport import KEEPALIVE_EXPIRY, H11Transport
from ._tls import default_ssl_context

if TYPE_CHECKING:
    import asyncio

    import aiohttp

__all__ = [
    "IDLE_EXPIRY",
    "UNBOUNDED_LIMITS",
    "BodyTooLarge",
    "FastTransport",
    "SDKAsyncClient",
    "aiohttp_available",
    "declared_length",
    "read_capped",
]

#: Seconds an idle pooled connection is kept, on every path. Below common server idle timeouts
#: (uvicorn's 5 s): reusing a connection the server is closing fails the request after it was
#: sent, which the SDK must report as "may have been charged" instead of retrying.
IDLE_EXPIRY = KEEPALIVE_EXPIRY

#: No cap on connections (the caller bounds concurrency), idle ones kept for IDLE_EXPIRY.
UNBOUNDED_LIMITS = httpx.Limits(
    max_connections=None, max_keepalive_connections=None, keepalive_expiry=IDLE_EXPIRY
)
_POOL_HANDLE = httpcore.AsyncConnectionPool.handle_async_request
_HTTPX_HANDLE = httpx.AsyncHTTPTransport.handle_async_request
_CLIENT_ROUTING = httpx.AsyncClient._transport_for_url

try:  # the optional extra
    import aiohttp as _aiohttp
    import yarl as _yarl
except ImportError:  # pragma: no cover - exercised where aiohttp is not installed
    _aiohttp = None  # type: ignore[assignment]
    _yarl = None  # type: ignore[assignment]


def aiohttp_available() -> bool:
    """Whether the aiohttp path can be used (aiohttp is installed)."""
    return _aiohttp is not None


def _is_mocked() -> bool:
    """Whether a mock has replaced httpx's or httpcore's request handling on the class.

    respx patches ``httpcore.AsyncConnectionPool`` (its default) or ``AsyncClient``'s routing
    (``using="httpx"``); pytest-httpx patches ``httpx.AsyncHTTPTransport``. Requests must then
    go through the client's transport routing and httpx's own transport.
    """
    return (
        httpcore.AsyncConnectionPool.handle_async_request is not _POOL_HANDLE
        or httpx.AsyncHTTPTransport.handle_async_request is not _HTTPX_HANDLE
        or httpx.AsyncClient._transport_for_url is not _CLIENT_ROUTING
    )


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under Trio (or outside any loop)."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- aiohttp (asyncio) ----------------------------------------------------------------------


def _map_aiohttp_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception httpcore raises for the same failure."""
    assert _aiohttp is not None
    message = str(exc) or type(exc).__name__
    if isinstance(exc, _aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, TimeoutError):  # SocketTimeoutError, ServerTimeoutError
        return httpx.ReadTimeout(message)
    if isinstance(exc, _aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, _aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if isinstance(exc, _aiohttp.ClientPayloadError | _aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, _aiohttp.InvalidURL | _aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message)
    # A reset or any other socket failure once the request may have left: httpcore says
    # ReadError, which callers treat as "may have reached the server".
    return httpx.ReadError(message)


_AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (
    (_aiohttp.ClientError, TimeoutError) if _aiohttp is not None else ()
)


class _AiohttpStream(httpx.AsyncByteStream):
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(64 << 10):
                yield chunk
        except _AIOHTTP_ERRORS as exc:
            raise _map_aiohttp_error(exc) from exc

    async def aclose(self) -> None:
        # Returns the connection to the pool when the body was read to the end, closes it
        # otherwise (a capped body, a cancelled read).
        self._response.release()


class _AiohttpPool:
    """One aiohttp session bound to the event loop that created it."""

    def __init__(self, ssl_context: ssl.SSLContext | bool) -> None:
        assert _aiohttp is not None
        self._ssl: ssl.SSLContext | bool = ssl_context
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[Any, Any], aiohttp.ClientTimeout] = {}

    def session_for(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        session = self.session
        if session is not None and self.loop is loop and not session.closed:
            return session
        assert _aiohttp is not None
        connector = _aiohttp.TCPConnector(
            limit=0,  # the caller bounds concurrency; no request waits for a connection
            ssl=self._ssl,
            ttl_dns_cache=300,
            keepalive_timeout=IDLE_EXPIRY,
        )
        self.session = _aiohttp.ClientSession(
            connector=connector,
            cookie_jar=_aiohttp.DummyCookieJar(),  # httpx keeps the cookies
            auto_decompress=False,  # httpx decodes Content-Encoding itself
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=_aiohttp.ClientTimeout(total=None),
        )
        self.loop = loop
        return self.session

    def timeout(self, spec: dict[str, float | None]) -> aiohttp.ClientTimeout:
        key = (spec.get("connect"), spec.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            assert _aiohttp is not None
            # ``connect`` covers name resolution, TCP and TLS (``sock_connect`` skips DNS); it
            # never includes waiting for a pooled connection, since the pool has no limit.
            found = self._timeouts[key] = _aiohttp.ClientTimeout(
                total=None, connect=key[0], sock_read=key[1]
            )
        return found

    async def send(self, loop: asyncio.AbstractEventLoop, request: httpx.Request) -> httpx.Response:
        assert _yarl is not None
        session = self.session_for(loop)
        body = request.content if hasattr(request, "_content") else await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        timeout = self.timeout(request.extensions.get("timeout", {}))
        try:
            response = await session.request(
                request.method,
                _yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
                chunked=None,
            )
        except _AIOHTTP_ERRORS as exc:
            raise _map_aiohttp_error(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpStream(response),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def post(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: dict[str, float | None],
        limit: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST ``body`` and read the whole answer, refusing one larger than ``limit`` bytes.

        No ``httpx.Request``/``httpx.Response`` is built: on the hot path of a batch their
        construction cost more CPU than the request itself. Failures raise the same httpx
        exceptions as :meth:`send`; an oversized body raises :class:`BodyTooLarge`.
        """
        assert _yarl is not None
        session = self.session_for(loop)
        try:
            response = await session.post(
                _yarl.URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=self.timeout(timeout),
            )
            try:
                content = await read_capped(
                    response.content.iter_any(),
                    response.content_length,
                    limit,
                    response.status,
                    response.headers,
                )
            finally:
                response.release()
        except _AIOHTTP_ERRORS as exc:
            raise _map_aiohttp_error(exc) from exc
        return response.status, response.headers, content

    async def aclose(self) -> None:
        session, self.session = self.session, None
        if session is not None and not session.closed:
            await session.close()


class BodyTooLarge(Exception):
    """A response body over the caller's cap; it was not read to the end."""

    def __init__(self, status_code: int, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status_code} response body over the cap")
        self.status_code = status_code
        self.headers = headers


def declared_length(value: str | None) -> int | None:
    """A ``Content-Length`` value, None when absent or not plain ASCII digits."""
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


async def read_capped(
    chunks: AsyncIterable[bytes],
    declared: int | None,
    limit: int,
    status_code: int,
    headers: Mapping[str, str],
) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it is known to exceed ``limit``.

    A declared length over the limit is refused before reading a byte; without one, reading
    stops at the first chunk past the limit.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(status_code, headers)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(status_code, headers)
        parts.append(chunk)
    return b"".join(parts)


class FastTransport(httpx.AsyncBaseTransport):
    """The transport :class:`~nanobanana_async.AsyncNanoBanana` builds for itself.

    aiohttp on asyncio when it is installed (and ``use_aiohttp`` is not False),
    :class:`~nanobanana_async._h11_transport.H11Transport` otherwise, httpx's own transport
    when a mock has patched httpx or httpcore. The TLS context is built once per process, in a
    worker thread.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, use_aiohttp: bool | None = None):
        if use_aiohttp and _aiohttp is None:
            raise RuntimeError("aiohttp is not installed: pip install 'nanobanana-async[aiohttp]'")
        self._verify = verify
        self._use_aiohttp = use_aiohttp is not False and _aiohttp is not None
        self._h11: H11Transport | None = None
        self._httpx: httpx.AsyncHTTPTransport | None = None
        self._aiohttp: _AiohttpPool | None = None

    async def _setup(self) -> H11Transport:
        verify = self._verify
        ctx = await default_ssl_context() if verify is True else verify
        if self._h11 is None:  # another task may have set up while this one waited
            self._httpx = httpx.AsyncHTTPTransport(verify=ctx, limits=UNBOUNDED_LIMITS)
            if self._use_aiohttp:
                self._aiohttp = _AiohttpPool(ctx)
            self._h11 = H11Transport(verify=ctx, keepalive_expiry=IDLE_EXPIRY)
        return self._h11

    @property
    def uses_aiohttp(self) -> bool:
        """Whether requests made on asyncio go through aiohttp."""
        return self._use_aiohttp

    def can_post_directly(self) -> bool:
        """Whether :meth:`post_directly` may be used now: aiohttp, on asyncio, no mock."""
        return self._use_aiohttp and _running_asyncio_loop() is not None and not _is_mocked()

    async def post_directly(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: dict[str, float | None],
        limit: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST through the aiohttp pool without building httpx objects (see ``_AiohttpPool.post``).

        Only when :meth:`can_post_directly` is true.
        """
        if self._h11 is None:
            await self._setup()
        pool, loop = self._aiohttp, _running_asyncio_loop()
        assert pool is not None
        assert loop is not None
        return await pool.post(loop, url, body, headers, timeout, limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lean = self._h11
        if lean is None:
            lean = await self._setup()
        if _is_mocked():
            assert self._httpx is not None
            return await self._httpx.handle_async_request(request)
        pool = self._aiohttp
        if pool is not None:
            loop = _running_asyncio_loop()
            if loop is not None:
                return await pool.send(loop, request)
        return await lean.handle_async_request(request)

    async def aclose(self) -> None:
        pool, reference, lean = self._aiohttp, self._httpx, self._h11
        try:
            if pool is not None and _running_asyncio_loop() is not None:
                await pool.aclose()
        finally:
            try:
                if lean is not None:
                    await lean.aclose()
            finally:
                if reference is not None:
                    await reference.aclose()

    async def __aenter__(self) -> FastTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


class _LazyCookies(httpx.Cookies):
    # httpx parses every response for cookies through urllib's cookiejar, about a sixth of the
    # client's CPU per request; the API sets none, so only responses that do are parsed.
    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class SDKAsyncClient(httpx.AsyncClient):
    """The ``httpx.AsyncClient`` the SDK builds for itself (never a caller's client).

    Behaves as httpx's, except that a response without ``Set-Cookie`` skips cookie parsing.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sdk_cookies: httpx.Cookies = _LazyCookies(kwargs.get("cookies"))

    @property
    def cookies(self) -> httpx.Cookies:
        return self._sdk_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._sdk_cookies = _LazyCookies(cookies)
