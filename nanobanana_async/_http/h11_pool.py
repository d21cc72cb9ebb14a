"""A lean HTTP/1.1 transport for httpx: ``h11`` over anyio streams (asyncio and Trio).

httpcore's pool spends about a millisecond of CPU per request under Trio, even in small pools;
this transport does the same job with a plain pool: one list of idle connections per origin,
most recently used first. A request takes an idle connection or opens a new one (never waits:
the caller bounds concurrency). A connection goes back to the pool only when its response was
read to the end and both sides of h11 agree it can carry another request; anything else (an
error, a cancellation, a body closed early) closes it.

Idle connections older than :data:`KEEPALIVE_EXPIRY` seconds are dropped before reuse, as is
any connection holding bytes that belong to no response: bytes h11 already received past the
end of the last one (a stray CRLF after a body), bytes anyio or TLS read ahead, and anything
that reached the socket while it sat idle (an EOF, a reset, unexpected data). A request sent on
such a connection would fail after it was sent, which the SDK must report as "may have been
charged"; a new connection costs a handshake.

Failures are mapped to the httpx exceptions httpcore raises for the same situation:
``ConnectError`` / ``ConnectTimeout`` before a byte of the request left, ``WriteError`` /
``WriteTimeout`` while writing it, ``ReadError`` / ``ReadTimeout`` / ``RemoteProtocolError``
once it may have reached the server.

:meth:`H11Transport.post` is the SDK's direct path for generate requests (no httpx request or
response objects): it writes the request itself and reads the common answer without h11
(:mod:`~nanobanana_async._http.wire`), under one cancel scope per request; any other answer
is handed to h11 with the bytes already read, so it is parsed (or refused) as on
:meth:`H11Transport.handle_async_request`. Same pool, reuse checks, timeouts and failures.

It is the longest module of ``_http`` because it is one thing: the pool, its connections and
both request paths share one set of reuse, timeout and failure rules.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import anyio
import h11
import httpx
from anyio.abc import ByteStream, SocketAttribute

from .._net.connect import connect, has_unread_input
from .body import BodyTooLarge, declared_length, read_capped
from .encoding import DECODE_SLICE, read_encoded
from .resend import NO_ANSWER, replayable
from .tls import default_ssl_context
from .wire import MAX_HEAD, IllegalHeader, PlainHead, ResponseHeaders, parse_head, request_bytes

__all__ = ["KEEPALIVE_EXPIRY", "H11Transport"]

#: Seconds an idle connection may be reused for (uvicorn closes idle ones after 5 s).
KEEPALIVE_EXPIRY = 4.0
_READ_SIZE = 64 << 10
_IO_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)

Origin = tuple[bytes, str, int]


class _Fallback(Exception):
    """The answer is not the plain kind the direct path reads: h11 reads it (with ``received``)."""

    def __init__(self, received: bytes) -> None:
        super().__init__("not a plain answer")
        self.received = received


async def _read_some(stream: ByteStream) -> bytes:
    """Up to ``_READ_SIZE`` bytes; ``b""`` at the end of the stream; a failure as ReadError."""
    try:
        return await stream.receive(_READ_SIZE)
    except anyio.EndOfStream:
        return b""
    except _IO_ERRORS as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc


class _Connection:
    __slots__ = ("answered", "h11", "idle_since", "origin", "sock", "stream")

    def __init__(self, stream: ByteStream, origin: Origin) -> None:
        self.stream = stream
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT)
        self.sock: socket.socket | None = stream.extra(SocketAttribute.raw_socket, None)
        self.idle_since = 0.0
        #: Whether a byte of the current request's answer arrived (see _http/resend.py).
        self.answered = False

    def unanswered(self, exc: BaseException) -> bool:
        """Whether ``exc`` ended the current request before any byte of its answer arrived,
        in a way that says the server closed the connection (not a timeout)."""
        return not self.answered and isinstance(exc, NO_ANSWER)

    def has_unread_input(self) -> bool:
        """Whether anything arrived that no response claims: then it must not carry a request."""
        return has_unread_input(self.stream, self.sock)

    async def aclose(self) -> None:
        # Forcefully: works inside a cancelled scope, skips TLS close_notify.
        await anyio.aclose_forcefully(self.stream)

    # A bare cancel scope with a deadline rather than anyio.fail_after: the same, at a fraction
    # of the CPU (this runs for every read and write).
    async def send(self, data: bytes, timeout: float | None) -> None:
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                await self.stream.send(data)
        except _IO_ERRORS as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
        if scope.cancelled_caught:
            raise httpx.WriteTimeout("timed out writing the request")

    async def receive(self, timeout: float | None) -> bytes:
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        data = b""
        with anyio.CancelScope(deadline=deadline) as scope:
            data = await _read_some(self.stream)
        if scope.cancelled_caught:
            raise httpx.ReadTimeout("timed out reading the response")
        if data:
            self.answered = True
        return data

    async def send_request(self, request: httpx.Request, timeout: float | None) -> None:
        h = self.h11
        try:
            head = h.send(
                h11.Request(
                    method=request.method, target=request.url.raw_path, headers=request.headers.raw
                )
            )
            assert head is not None
            if hasattr(request, "_content"):  # the body is in memory: one write
                body = request.content
                data = (h.send(h11.Data(data=body)) or b"") if body else b""
                end = h.send(h11.EndOfMessage()) or b""
                await self.send(b"".join((head, data, end)), timeout)
                return
            await self.send(head, timeout)
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    await self.send(h.send(h11.Data(data=chunk)) or b"", timeout)
            await self.send(h.send(h11.EndOfMessage()) or b"", timeout)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc

    async def receive_head(self, timeout: float | None) -> h11.Response:
        while True:
            event = await self.next_event(timeout)
            if type(event) is h11.Response:
                return event
            if type(event) is not h11.InformationalResponse:
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def next_event(self, timeout: float | None) -> Any:
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            data = await self.receive(timeout)
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            conn.receive_data(data)


def _slice_for(response: h11.Response) -> int | None:
    # h11 gives header names in lower case.
    encoded = any(name == b"content-encoding" for name, _ in response.headers.raw_items())
    return DECODE_SLICE if encoded else None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _h11_body(conn: _Connection, timeout: float | None) -> AsyncGenerator[bytes, None]:
    """The body of the response h11 is reading on ``conn``, chunk by chunk, to its end."""
    while True:
        event = await conn.next_event(timeout)
        if type(event) is h11.Data:
            if event.data:
                yield bytes(event.data)
        elif type(event) is h11.EndOfMessage:
            return
        else:
            raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")


class _ResponseStream(httpx.AsyncByteStream):
    """The response body; closing it returns the connection to the pool or closes it.

    An encoded body comes in slices of ``slice_size`` bytes: httpx decodes each chunk in one
    call, so a 64 KiB read of a gzip bomb would briefly take 64 MiB; a 1 KiB slice at most
    about 1 MiB, and the caller's size cap stops the read after the first slices.
    """

    __slots__ = ("_conn", "_done", "_rest", "_slice", "_timeout", "_transport")

    def __init__(
        self,
        transport: H11Transport,
        conn: _Connection,
        timeout: float | None,
        slice_size: int | None = None,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._timeout = timeout
        self._done = False
        self._slice = slice_size
        self._rest = memoryview(b"")

    def __aiter__(self) -> _ResponseStream:
        # An iterator object, not an async generator: nothing left unfinished when a capped
        # read stops early.
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None or self._done:
            raise StopAsyncIteration
        if self._rest:
            return self._take(self._rest)
        try:
            data = await self._next_chunk(conn)
        except BaseException:
            self._conn = None
            await conn.aclose()
            raise
        if data is None:
            self._done = True
            raise StopAsyncIteration
        if self._slice is not None and len(data) > self._slice:
            return self._take(memoryview(data))
        return data

    def _take(self, view: memoryview) -> bytes:
        size = self._slice or len(view)
        self._rest = view[size:]
        return bytes(view[:size])

    async def _next_chunk(self, conn: _Connection) -> bytes | None:
        """The next piece of the body, None at its end."""
        while True:
            event = await conn.next_event(self._timeout)
            if type(event) is h11.Data:
                if event.data:
                    return bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                return None
            else:
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._done:
                await self._transport._release(conn)
            else:
                await conn.aclose()


class H11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with h11 over anyio streams, one unbounded pool of idle connections per origin.

    ``verify`` is an ``ssl.SSLContext``, or True (httpx's default context, built once in a
    worker thread on the first https request) or False (no verification).
    """

    def __init__(
        self, *, verify: ssl.SSLContext | bool = True, keepalive_expiry: float = KEEPALIVE_EXPIRY
    ) -> None:
        self._verify = verify
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False  # after aclose, connections are closed when released, not kept
        self._targets: dict[str, tuple[Origin, bytes, bytes]] = {}
        #: How many connections were opened (for tests and diagnostics).
        self.connections_opened = 0

    async def _ssl_context(self) -> ssl.SSLContext:
        verify = self._verify
        if isinstance(verify, ssl.SSLContext):
            return verify  # the caller's, as given
        if verify:
            return await default_ssl_context()
        return httpx.create_ssl_context(verify=False)  # no CA bundle to load: cheap

    async def _acquire(self, origin: Origin) -> _Connection | None:
        # Expired connections of every origin go (an image host used once keeps none open);
        # each list is oldest first.
        deadline = time.monotonic() - self._expiry
        for conns in list(self._idle.values()):  # closing yields: the dict may grow
            while conns and conns[0].idle_since < deadline:
                await conns.pop(0).aclose()
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.has_unread_input():
                conn.answered = False
                return conn
            await conn.aclose()
        return None

    async def _release(self, conn: _Connection) -> None:
        h = conn.h11
        if self._closed or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            await conn.aclose()
            return
        h.start_next_cycle()
        if h.trailing_data != (b"", False):
            # Bytes after the end of the response (a stray CRLF, an early EOF): h11 would read
            # them as the start of the next response and fail it after it was sent.
            await conn.aclose()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        ctx = await self._ssl_context() if scheme == b"https" else None
        try:
            with anyio.fail_after(timeout):
                stream = await connect(host, port, ctx)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out connecting") from exc
        except _IO_ERRORS as exc:  # ssl.SSLError is an OSError
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        self.connections_opened += 1
        return _Connection(stream, origin)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        host = url.raw_host.decode("ascii")
        origin: Origin = (scheme, host, url.port or (443 if scheme == b"https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout") or {}
        write_timeout, read_timeout = timeouts.get("write"), timeouts.get("read")

        conn = await self._acquire(origin)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"))
            try:
                await conn.send_request(request, write_timeout)
                event = await conn.receive_head(read_timeout)
                break
            except BaseException as exc:
                await conn.aclose()
                # Once more on a new connection, by Go's rule (_http/resend.py).
                if not (
                    reused
                    and conn.unanswered(exc)
                    and hasattr(request, "_content")  # the body can be sent again
                    and replayable(request.method, request.headers.keys())
                ):
                    raise
                conn, reused = None, False
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=_ResponseStream(self, conn, read_timeout, _slice_for(event)),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
        )

    # -- the direct path ---------------------------------------------------------------------

    def _target(self, url: str) -> tuple[Origin, bytes, bytes]:
        """Origin, request target and ``Host`` value of ``url``, parsed once per URL."""
        found = self._targets.get(url)
        if found is None:
            parsed = httpx.URL(url)
            scheme = parsed.raw_scheme
            if scheme not in (b"http", b"https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {parsed.scheme!r}")
            origin: Origin = (
                scheme,
                parsed.raw_host.decode("ascii"),
                parsed.port or (443 if scheme == b"https" else 80),
            )
            found = (origin, parsed.raw_path, parsed.netloc)
            if len(self._targets) < 64:
                self._targets[url] = found
        return found

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: Mapping[str, float | None],
        limit: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST ``body`` and read the whole answer, refusing one larger than ``limit`` bytes.

        The request carries ``Host``, ``headers`` and ``Content-Length``. Returns the status,
        the headers (:class:`~nanobanana_async._http.wire.ResponseHeaders`) and the body, decoded
        as httpx decodes it when the server compressed it anyway; a body over ``limit``
        raises :class:`~nanobanana_async._http.body.BodyTooLarge`. Pool, reuse checks,
        timeouts and failures are those of :meth:`handle_async_request`.
        """
        origin, target, host = self._target(url)
        try:
            data = request_bytes(target, host, headers, body)
        except IllegalHeader as exc:
            raise httpx.LocalProtocolError(str(exc)) from None
        conn = await self._acquire(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin, timeout.get("connect"))
        try:
            try:
                status, response_headers, content, reusable = await self._exchange(
                    conn, data, timeout.get("write"), timeout.get("read"), limit
                )
            except NO_ANSWER as exc:
                # Once more on a new connection, by Go's rule (_http/resend.py).
                if not (reused and conn.unanswered(exc) and replayable("POST", headers)):
                    raise
                await conn.aclose()
                conn = await self._connect(origin, timeout.get("connect"))
                status, response_headers, content, reusable = await self._exchange(
                    conn, data, timeout.get("write"), timeout.get("read"), limit
                )
        except _Fallback as fallback:
            return await self._post_with_h11(
                conn,
                target,
                host,
                headers,
                body,
                fallback.received,
                timeout.get("read"),
                limit,
            )
        except BaseException:
            await conn.aclose()
            raise
        if reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(conn)
        else:
            await conn.aclose()
        return status, response_headers, content

    async def _exchange(
        self,
        conn: _Connection,
        data: bytes,
        write_timeout: float | None,
        read_timeout: float | None,
        limit: int,
    ) -> tuple[int, ResponseHeaders, bytes, bool]:
        """Write the request and read a plain answer under one cancel scope.

        The scope's deadline is the write timeout while writing, then the read timeout from
        each read: the timeouts of :meth:`_Connection.send` and :meth:`_Connection.receive`
        at one scope per request instead of one per operation. Raises :class:`_Fallback`
        (with the bytes read so far) for any other answer. Returns whether the connection may
        carry another request: a keep-alive answer with nothing after its body.
        """
        stream = conn.stream
        reading = False
        plain: PlainHead | None = None
        content = b""
        with anyio.CancelScope(
            deadline=math.inf if write_timeout is None else anyio.current_time() + write_timeout
        ) as scope:
            try:
                await stream.send(data)
            except _IO_ERRORS as exc:
                raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
            reading = True
            received = b""
            while True:
                if read_timeout is not None:
                    scope.deadline = anyio.current_time() + read_timeout
                else:
                    scope.deadline = math.inf
                chunk = await _read_some(stream)
                if not chunk:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                conn.answered = True
                received += chunk
                end = received.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(received) > MAX_HEAD or b"\n\n" in received or b"\n\r\n" in received:
                    raise _Fallback(received)  # h11 refuses the size, or reads bare-LF lines
            head = parse_head(received[:end])
            if head is None:
                raise _Fallback(received)
            length = head.length
            if length > limit:  # refused unread, as a declared length over the cap elsewhere
                raise BodyTooLarge(head.status, head.headers)
            content = received[end + 4 :]
            while len(content) < length:
                if read_timeout is not None:
                    scope.deadline = anyio.current_time() + read_timeout
                chunk = await _read_some(stream)
                if not chunk:
                    raise httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body: "
                        f"received {len(content)} bytes, expected {length}"
                    )
                content += chunk
            plain = head
        if plain is None:  # the deadline passed
            if reading:
                raise httpx.ReadTimeout("timed out reading the response")
            raise httpx.WriteTimeout("timed out writing the request")
        head, length = plain, plain.length
        # Bytes past the body answer nothing: that connection is never reused (as h11's
        # trailing data in _release).
        reusable = head.keep_alive and len(content) == length
        if len(content) != length:
            content = content[:length]
        if head.encoded:
            # Compressed although asked for identity: decoded as httpx would, under the cap.
            content = await read_encoded(
                _once(content), length, limit, head.status, head.headers, head.raw
            )
        return head.status, head.headers, content, reusable

    async def _post_with_h11(
        self,
        conn: _Connection,
        target: bytes,
        host: bytes,
        headers: Mapping[str, str],
        body: bytes,
        received: bytes,
        read_timeout: float | None,
        limit: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Finish a request whose answer the direct path does not read, with h11.

        h11 is told about the request already on the wire (its output discarded) and given
        the bytes read so far: from there on, the path of :meth:`handle_async_request`.
        """
        h = conn.h11
        try:
            raw_headers = [(b"Host", host)]
            raw_headers += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
            raw_headers.append((b"Content-Length", b"%d" % len(body)))
            try:
                h.send(h11.Request(method=b"POST", target=target, headers=raw_headers))
                if body:
                    h.send(h11.Data(data=body))
                h.send(h11.EndOfMessage())
            except h11.LocalProtocolError as exc:  # pragma: no cover - checked before sending
                raise httpx.LocalProtocolError(str(exc)) from exc
            h.receive_data(received)
            event = await conn.receive_head(read_timeout)
            response_headers = ResponseHeaders()
            raw = event.headers.raw_items()
            for raw_name, raw_value in raw:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                previous = dict.get(response_headers, name)
                response_headers[name] = value if previous is None else f"{previous}, {value}"
            status = event.status_code
            declared = declared_length(response_headers.get("content-length"))
            async with contextlib.aclosing(_h11_body(conn, read_timeout)) as chunks:
                if "content-encoding" in response_headers:
                    content = await read_encoded(
                        chunks, declared, limit, status, response_headers, raw
                    )
                else:
                    content = await read_capped(chunks, declared, limit, status, response_headers)
        except BaseException:
            await conn.aclose()
            raise
        await self._release(conn)
        return status, response_headers, content

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when their response does."""
        self._closed = True
        idle, self._idle = self._idle, {}
        # Every close is forceful (it never waits), and a cancellation half-way would leave
        # the rest open with nothing referring to them any more.
        with anyio.CancelScope(shield=True):
            for conns in idle.values():
                for conn in conns:
                    await conn.aclose()

    @property
    def idle_connections(self) -> int:
        """How many connections wait in the pool."""
        return sum(len(conns) for conns in self._idle.values())
