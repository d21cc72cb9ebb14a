"""The aiohttp path (extra ``aiohttp``, asyncio only): one pool, httpx's errors and types.

aiohttp's failures are mapped to the httpx exceptions httpcore raises for the same situation
(``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``),
so callers handle one family of errors whichever path carried the request. Imported only when
a request is made on asyncio with aiohttp installed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from .._net.idle import is_readable
from .body import read_capped
from .encoding import read_encoded
from .h11_pool import KEEPALIVE_EXPIRY
from .resend import replayable

__all__ = ["AiohttpPool"]


def _map_aiohttp_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception httpcore raises for the same failure."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, TimeoutError):  # SocketTimeoutError, ServerTimeoutError
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message)
    # A reset or any other socket failure once the request may have left: httpcore says
    # ReadError, which callers treat as "may have reached the server".
    return httpx.ReadError(message)


_AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)
# What aiohttp raises when the server closed or reset a connection under a request.
_CLOSED_UNDER = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class _Handler(ResponseHandler):
    """aiohttp's protocol, noting whether any byte of the current answer arrived."""

    answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True
        super().data_received(data)


# The connection _CheckedConnector handed out from its pool for the request running in this
# task (set in the task's own context: the connector runs inside the request's await), and
# whether the request must have a new connection.
_reused: contextvars.ContextVar[_Handler | None] = contextvars.ContextVar(
    "nanobanana_reused", default=None
)
_fresh_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "nanobanana_fresh_only", default=False
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


class _CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, never reusing an idle connection whose socket has input.

    aiohttp reuses a pooled connection while its transport is open. When the server closed
    it after the last response without ``Connection: close``, the FIN is often still unread
    (the event loop has not run since), so the next request went out on a closed connection
    and failed after it was sent: "may have been charged" for every second call. Before a
    pooled connection is handed out, its socket is polled as httpcore and the h11 pool do; one
    with an EOF, a reset or stray bytes waiting, or that aiohttp itself marked for closing, is
    closed and the next one (or a new connection) is used.

    It also records the pooled connection it hands out (see :func:`_resending`), and hands
    out none when the request must go on a new connection.

    ``_get`` is the step of ``BaseConnector.connect`` that takes a pooled connection, and
    ``_factory`` builds each connection's protocol: private, but with this signature and role
    since aiohttp 3.11 (the minimum of the ``aiohttp`` extra).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        handler: Any = functools.partial(_Handler, loop=self._loop)
        self._factory = handler

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        if _fresh_only.get():
            return None
        while (conn := await super()._get(key, traces)) is not None:
            protocol = conn.protocol
            transport = None if protocol is None else protocol.transport
            if (
                isinstance(protocol, _Handler)
                and transport is not None
                and not protocol.should_close
                and not is_readable(transport.get_extra_info("socket"))
            ):
                protocol.answered = False
                _reused.set(protocol)
                return conn
            conn.close()  # back to the connector as "close it", never to the pool
        return None


# Methods aiohttp itself sends again after a failure on a pooled connection.
_AIOHTTP_RESENDS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


async def _resending(
    request: Callable[[], Awaitable[aiohttp.ClientResponse]],
    method: str,
    header_names: Iterable[str],
) -> aiohttp.ClientResponse:
    """``request()``, sent once more on a new connection when the pooled connection it went
    out on was closed under it before any byte of the answer (Go's rule, _http/resend.py).

    aiohttp resends idempotent methods itself; others are resent here when they carry an
    ``Idempotency-Key``.
    """
    _reused.set(None)
    try:
        return await request()
    except _CLOSED_UNDER:
        handler = _reused.get()
        if (
            handler is None
            or handler.answered
            or method in _AIOHTTP_RESENDS
            or not replayable(method, header_names)
        ):
            raise
    token = _fresh_only.set(True)
    try:
        return await request()
    finally:
        _fresh_only.reset(token)


class AiohttpPool:
    """One aiohttp session bound to the event loop that created it."""

    def __init__(self, ssl_context: ssl.SSLContext | bool) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[Any, Any], aiohttp.ClientTimeout] = {}

    def session_for(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        session = self.session
        if session is not None and self.loop is loop and not session.closed:
            return session
        connector = _CheckedConnector(
            limit=0,  # the caller bounds concurrency; no request waits for a connection
            ssl=self._ssl,
            ttl_dns_cache=300,
            keepalive_timeout=KEEPALIVE_EXPIRY,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
            auto_decompress=False,  # httpx decodes Content-Encoding itself
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self.loop = loop
        return self.session

    def timeout(self, spec: dict[str, float | None]) -> aiohttp.ClientTimeout:
        key = (spec.get("connect"), spec.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            # ``connect`` covers name resolution, TCP and TLS (``sock_connect`` skips DNS); it
            # never includes waiting for a pooled connection, since the pool has no limit.
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=key[0], sock_read=key[1]
            )
        return found

    async def send(self, loop: asyncio.AbstractEventLoop, request: httpx.Request) -> httpx.Response:
        session = self.session_for(loop)
        body = request.content if hasattr(request, "_content") else await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        timeout = self.timeout(request.extensions.get("timeout", {}))
        try:
            response = await _resending(
                functools.partial(
                    session.request,
                    request.method,
                    yarl.URL(str(request.url), encoded=True),
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    timeout=timeout,
                    compress=None,
                    chunked=None,
                ),
                request.method,
                request.headers.keys(),
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
        exceptions as :meth:`send`; a body is decoded as httpx decodes it (``DecodingError``
        when it cannot be); one over ``limit`` bytes, encoded or decoded, raises
        :class:`BodyTooLarge`.
        """
        session = self.session_for(loop)
        try:
            response = await _resending(
                functools.partial(
                    session.post,
                    yarl.URL(url, encoded=True),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=self.timeout(timeout),
                ),
                "POST",
                headers,
            )
            try:
                if "Content-Encoding" in response.headers:
                    # Compressed although asked for identity: decoded as httpx would.
                    content = await read_encoded(
                        response.content.iter_any(),
                        response.content_length,
                        limit,
                        response.status,
                        response.headers,
                        response.raw_headers,
                    )
                else:
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
