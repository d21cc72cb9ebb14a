"""The SDK's default HTTP transport: an httpx transport that stays fast at high concurrency.

httpx's own pool (httpcore 1.0) re-assigns every queued request to every connection on each
change, so its bookkeeping grows with the square of the connections in one pool: at a few
hundred concurrent requests the client spends its CPU there, not on I/O (the figures are in
docs/architecture.md, "Why the SDK has its own transports").
:class:`FastTransport` keeps the httpx interface (``httpx.AsyncClient``, ``http_client=``,
respx) and picks, per request:

- on asyncio, when ``aiohttp`` is installed (extra ``nanobanana-async[aiohttp]``): one
  ``aiohttp`` connection pool, with aiohttp's failures mapped to the httpx exceptions httpx
  itself would raise for the same situation (``ConnectError``, ``ConnectTimeout``,
  ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``);
- otherwise (Trio, or no aiohttp): :class:`~nanobanana_async._http.h11_pool.H11Transport`, a
  lean HTTP/1.1 transport (h11 over anyio streams, one plain pool of idle connections), with
  the same error mapping. httpcore costs about a millisecond of CPU per request under Trio,
  even in small pools; this path costs about half as much.

Generate requests skip httpx's request and response objects altogether
(:meth:`FastTransport.post_directly`): through the aiohttp pool on asyncio, through
:meth:`H11Transport.post <nanobanana_async._http.h11_pool.H11Transport.post>` otherwise.

When a mock has patched httpx's or httpcore's transport (respx with either mocker,
pytest-httpx), both paths step aside and the request goes through httpx's own transport, where
the mock sees it: a test suite never sends a real request because of this module.
"""

from __future__ import annotations

import importlib.util
import ssl
import sys
from collections.abc import Mapping
from types import FunctionType, TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from .._net.loop import running_loop
from .h11_pool import KEEPALIVE_EXPIRY, H11Transport
from .tls import default_ssl_context

if TYPE_CHECKING:
    from .aiohttp_pool import AiohttpPool

__all__ = [
    "IDLE_EXPIRY",
    "UNBOUNDED_LIMITS",
    "FastTransport",
    "aiohttp_available",
    "is_mocked",
]

#: Seconds an idle pooled connection is kept, on every path. Below common server idle timeouts
#: (uvicorn's 5 s): reusing a connection the server is closing fails the request after it was
#: sent, which the SDK must report as "may have been charged" instead of retrying.
IDLE_EXPIRY = KEEPALIVE_EXPIRY

#: No cap on connections (the caller bounds concurrency), idle ones kept for IDLE_EXPIRY.
UNBOUNDED_LIMITS = httpx.Limits(
    max_connections=None, max_keepalive_connections=None, keepalive_expiry=IDLE_EXPIRY
)
_HTTPX_HANDLE = httpx.AsyncHTTPTransport.handle_async_request
_CLIENT_ROUTING = httpx.AsyncClient._transport_for_url
# aiohttp is imported on the first request made through it, not with the SDK.
_AIOHTTP_INSTALLED = importlib.util.find_spec("aiohttp") is not None


def aiohttp_available() -> bool:
    """Whether the aiohttp path can be used (aiohttp is installed)."""
    return _AIOHTTP_INSTALLED


def is_mocked() -> bool:
    """Whether a mock has replaced httpx's or httpcore's request handling on the class.

    respx patches ``httpcore.AsyncConnectionPool`` (its default) or ``AsyncClient``'s routing
    (``using="httpx"``); pytest-httpx patches ``httpx.AsyncHTTPTransport``. Requests must then
    go through the client's transport routing and httpx's own transport.
    """
    return (
        httpx.AsyncHTTPTransport.handle_async_request is not _HTTPX_HANDLE
        or httpx.AsyncClient._transport_for_url is not _CLIENT_ROUTING
        or _httpcore_patched()
    )


# httpcore is not imported by the SDK (it imports trio whenever trio is installed, tens of
# milliseconds): httpx imports it when its own transport is built, as does a mock that patches
# it. Its pool's method as httpcore defines it, once seen.
_pool_handle: Any = None


def _httpcore_patched() -> bool:
    """Whether httpcore's pool runs anything but httpcore's own ``handle_async_request``."""
    global _pool_handle
    core = sys.modules.get("httpcore")
    if core is None:
        return False  # never imported: nothing has patched it
    pool = core.AsyncConnectionPool
    handle = pool.handle_async_request
    if handle is _pool_handle:
        return False
    # httpcore's own: a plain function compiled from the file that defines the class (a mock,
    # a wrapper or a replacement defined anywhere else is not), not wrapping another.
    code = getattr(handle, "__code__", None)
    reference = getattr(pool.__init__, "__code__", None)
    own = (
        type(handle) is FunctionType
        and code is not None
        and reference is not None
        and code.co_name == "handle_async_request"
        and code.co_filename == reference.co_filename
        and not hasattr(handle, "__wrapped__")
    )
    if own:
        _pool_handle = handle
    return not own


class FastTransport(httpx.AsyncBaseTransport):
    """The transport :class:`~nanobanana_async.AsyncNanoBanana` builds for itself.

    aiohttp on asyncio when it is installed (and ``use_aiohttp`` is not False),
    :class:`~nanobanana_async._http.h11_pool.H11Transport` otherwise, httpx's own transport
    when a mock has patched httpx or httpcore. The TLS context is built once per process, in a
    worker thread.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, use_aiohttp: bool | None = None):
        if use_aiohttp and not _AIOHTTP_INSTALLED:
            raise RuntimeError("aiohttp is not installed: pip install 'nanobanana-async[aiohttp]'")
        self._verify = verify
        self._use_aiohttp = use_aiohttp is not False and _AIOHTTP_INSTALLED
        self._h11: H11Transport | None = None
        self._httpx: httpx.AsyncHTTPTransport | None = None
        self._aiohttp: AiohttpPool | None = None
        self._ctx: ssl.SSLContext | bool = verify
        if self._use_aiohttp and running_loop() is not None:
            # Built on asyncio: aiohttp is imported now, not under the first requests of a
            # batch. Built outside a loop: on first use. Never under Trio.
            from . import aiohttp_pool  # noqa: F401

    async def _setup(self) -> H11Transport:
        verify = self._verify
        ctx = await default_ssl_context() if verify is True else verify
        if self._h11 is None:  # another task may have set up while this one waited
            self._ctx = ctx
            self._h11 = H11Transport(verify=ctx, keepalive_expiry=IDLE_EXPIRY)
        return self._h11

    def _reference(self) -> httpx.AsyncHTTPTransport:
        # httpx's own transport, for requests a mock must see (built, and httpcore imported,
        # only then).
        if self._httpx is None:
            self._httpx = httpx.AsyncHTTPTransport(verify=self._ctx, limits=UNBOUNDED_LIMITS)
        return self._httpx

    async def prepare(self) -> None:
        """Do the one-time work of the first request now (TLS context, importing aiohttp), so
        that a request admitted at a given moment (a rate limit's start slot) is sent then,
        not a few hundred milliseconds later together with the ones admitted after it."""
        if self._h11 is None:
            await self._setup()
        if self._use_aiohttp and running_loop() is not None and not is_mocked():
            self._aiohttp_pool()  # never under Trio

    def _aiohttp_pool(self) -> AiohttpPool:
        # Built (and aiohttp imported) on the first request made on asyncio, after _setup.
        pool = self._aiohttp
        if pool is None:
            from .aiohttp_pool import AiohttpPool

            pool = self._aiohttp = AiohttpPool(self._ctx)
        return pool

    @property
    def uses_aiohttp(self) -> bool:
        """Whether requests made on asyncio go through aiohttp."""
        return self._use_aiohttp

    def can_post_directly(self) -> bool:
        """Whether :meth:`post_directly` may be used now: no mock has patched httpx."""
        return not is_mocked()

    async def post_directly(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: dict[str, float | None],
        limit: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST without building httpx objects: through the aiohttp pool on asyncio (see
        ``AiohttpPool.post``), else ``H11Transport.post``. Only when :meth:`can_post_directly`
        is true. Failures raise the httpx exceptions of :meth:`handle_async_request`.
        """
        lean = self._h11
        if lean is None:
            lean = await self._setup()
        if self._use_aiohttp:
            loop = running_loop()
            if loop is not None:
                return await self._aiohttp_pool().post(loop, url, body, headers, timeout, limit)
        return await lean.post(url, body, headers, timeout, limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lean = self._h11
        if lean is None:
            lean = await self._setup()
        if is_mocked():
            return await self._reference().handle_async_request(request)
        if self._use_aiohttp:
            loop = running_loop()
            if loop is not None:
                return await self._aiohttp_pool().send(loop, request)
        return await lean.handle_async_request(request)

    async def aclose(self) -> None:
        pool, reference, lean = self._aiohttp, self._httpx, self._h11
        try:
            if pool is not None and running_loop() is not None:
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
