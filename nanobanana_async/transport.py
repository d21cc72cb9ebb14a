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

When respx (or anything else) has patched httpcore's pool, both paths step aside and the
request goes through httpx's own transport (several small httpcore pools, see
:class:`ShardedTransport`), where the mock sees it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import httpcore
import httpx

from ._h11_transport import H11Transport

if TYPE_CHECKING:
    import asyncio

    import aiohttp

__all__ = [
    "IDLE_EXPIRY",
    "SHARD_SIZE",
    "UNBOUNDED_LIMITS",
    "BodyTooLarge",
    "FastTransport",
    "SDKAsyncClient",
    "ShardedTransport",
    "aiohttp_available",
    "declared_length",
    "read_capped",
]

#: Requests in flight per httpcore pool on the sharded path (used when httpcore is patched).
#: Small pools keep httpcore's per-event assignment work small; more shards are created as
#: concurrency grows.
SHARD_SIZE = 8

#: Seconds an idle pooled connection is kept. Below common server idle timeouts (uvicorn's
#: 5 s): reusing a connection the server is closing fails the request after it was sent, which
#: the SDK must report as "may have been charged" instead of retrying.
IDLE_EXPIRY = 4.0

#: No cap on connections (the caller bounds concurrency), idle ones kept for IDLE_EXPIRY.
UNBOUNDED_LIMITS = httpx.Limits(
    max_connections=None, max_keepalive_connections=None, keepalive_expiry=IDLE_EXPIRY
)
_POOL_HANDLE = httpcore.AsyncConnectionPool.handle_async_request

try:  # the optional extra
    import aiohttp as _aiohttp
    import yarl as _yarl
except ImportError:  # pragma: no cover - exercised where aiohttp is not installed
    _aiohttp = None  # type: ignore[assignment]
    _yarl = None  # type: ignore[assignment]


def aiohttp_available() -> bool:
    """Whether the aiohttp path can be used (aiohttp is installed)."""
    return _aiohttp is not None


_default_ssl: ssl.SSLContext | None = None


async def _ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi), built once per process in a worker thread."""
    global _default_ssl
    if _default_ssl is None:
        ctx = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        if _default_ssl is None:
            _default_ssl = ctx
    return _default_ssl


def _httpcore_is_patched() -> bool:
    # respx's default mocker replaces AsyncConnectionPool.handle_async_request on the class.
    return httpcore.AsyncConnectionPool.handle_async_request is not _POOL_HANDLE


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under Trio (or outside any loop)."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- sharded httpcore pools (when respx or another mock has patched httpcore) --------------


class _Shard:
    __slots__ = ("active", "transport")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.active = 0


class _ShardStream(httpx.AsyncByteStream):
    __slots__ = ("_done", "_shard", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, shard: _Shard) -> None:
        self._stream = stream
        self._shard = shard
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The inner iterator itself, not a generator around it: one async generator fewer for
        # Trio to find unfinished when a capped read stops early.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._shard.active -= 1
        await self._stream.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, spread over several small connection pools.

    A request goes to the first pool with fewer than ``shard_size`` requests in flight; a new
    pool is opened when all are busy. Pools are never capped, so no request ever waits for a
    pooled connection: the caller bounds concurrency.
    """

    def __init__(
        self, *, verify: ssl.SSLContext | bool = True, shard_size: int = SHARD_SIZE
    ) -> None:
        self._verify = verify
        self._shard_size = shard_size
        self._shards: list[_Shard] = []

    def _new_shard(self) -> _Shard:
        shard = _Shard(httpx.AsyncHTTPTransport(verify=self._verify, limits=UNBOUNDED_LIMITS))
        self._shards.append(shard)
        return shard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        size = self._shard_size
        for shard in self._shards:
            if shard.active < size:
                break
        else:
            shard = self._new_shard()
        shard.active += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.active -= 1
            raise
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _ShardStream(stream, shard)
        return response

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        for shard in shards:
            await shard.transport.aclose()

    @property
    def shard_count(self) -> int:
        """How many pools are open."""
        return len(self._shards)


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
            found = self._timeouts[key] = _aiohttp.ClientTimeout(
                total=None, sock_connect=key[0], sock_read=key[1]
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
    :class:`~nanobanana_async._h11_transport.H11Transport` otherwise, small sharded httpcore
    pools when httpcore is patched (respx). The TLS context is built once per process, in a
    worker thread.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        use_aiohttp: bool | None = None,
        shard_size: int = SHARD_SIZE,
    ) -> None:
        if use_aiohttp and _aiohttp is None:
            raise RuntimeError("aiohttp is not installed: pip install 'nanobanana-async[aiohttp]'")
        self._verify = verify
        self._shard_size = shard_size
        self._use_aiohttp = use_aiohttp is not False and _aiohttp is not None
        self._h11: H11Transport | None = None
        self._sharded: ShardedTransport | None = None
        self._aiohttp: _AiohttpPool | None = None

    async def _setup(self) -> H11Transport:
        # Loading the CA bundle takes tens of milliseconds of CPU: done once per process, in a
        # worker thread, so that neither construction nor the event loop pays it.
        verify = self._verify
        ctx = await _ssl_context() if verify is True else verify
        if self._h11 is None:
            self._sharded = ShardedTransport(verify=ctx, shard_size=self._shard_size)
            if self._use_aiohttp:
                self._aiohttp = _AiohttpPool(ctx)
            self._h11 = H11Transport(verify=ctx)
        return self._h11

    @property
    def uses_aiohttp(self) -> bool:
        """Whether requests made on asyncio go through aiohttp."""
        return self._use_aiohttp

    def can_post_directly(self) -> bool:
        """Whether :meth:`post_directly` may be used now: aiohttp, on asyncio, no mock."""
        return (
            self._use_aiohttp and _running_asyncio_loop() is not None and not _httpcore_is_patched()
        )

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
        if self._sharded is None:
            await self._setup()
        pool, loop = self._aiohttp, _running_asyncio_loop()
        assert pool is not None
        assert loop is not None
        return await pool.post(loop, url, body, headers, timeout, limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lean = self._h11
        if lean is None:
            lean = await self._setup()
        if _httpcore_is_patched():
            assert self._sharded is not None
            return await self._sharded.handle_async_request(request)
        pool = self._aiohttp
        if pool is not None:
            loop = _running_asyncio_loop()
            if loop is not None:
                return await pool.send(loop, request)
        return await lean.handle_async_request(request)

    async def aclose(self) -> None:
        pool, sharded, lean = self._aiohttp, self._sharded, self._h11
        try:
            if pool is not None and _running_asyncio_loop() is not None:
                await pool.aclose()
        finally:
            try:
                if lean is not None:
                    await lean.aclose()
            finally:
                if sharded is not None:
                    await sharded.aclose()

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
