"""Connections on asyncio: an anyio ``ByteStream`` straight on an asyncio Protocol.

anyio's own asyncio socket stream pauses the transport's reading after every ``receive`` and
resumes it before the next one (two ``epoll_ctl`` calls per read), and ends every ``send``
with a shielded checkpoint (one more turn of the event loop): on a batch's hot path, about a
fifth of a request's client CPU. This stream keeps reading while there is room (up to
``_HIGH_WATER`` bytes waiting, as asyncio's own ``StreamReader`` does), wakes a reader with one
future, and writes without yielding when the socket takes the bytes at once (the write buffer
limit is 0, as in anyio: a ``send`` that returns has handed its bytes to the kernel). As with
anyio's streams, ``send`` and ``receive`` raise in a cancelled scope; neither yields to the
loop unless it has to wait. One task at a time reads or writes a stream, as the pool uses it.

What it does not change: an EOF, a reset or bytes arriving while a connection sits idle are
seen before reuse (:meth:`AsyncioStream.holds_input`, and the socket's poll), failures are
anyio's exceptions (``BrokenResourceError``, ``ClosedResourceError``, ``EndOfStream``), and
cancellation is the task's (a cancel scope's deadline cancels a waiting ``receive``).
Imported only on asyncio (under Trio, :mod:`~nanobanana_async._net.trio_stream`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.lowlevel import checkpoint_if_cancelled

__all__ = ["AsyncioStream", "connect"]

# Reading stops while this many received bytes wait for a reader, and resumes below _LOW_WATER.
_HIGH_WATER = 256 << 10
_LOW_WATER = 64 << 10
# How long a connection attempt to one address may take before the next address is tried.
_HAPPY_EYEBALLS_DELAY = 0.25


class _Protocol(asyncio.Protocol):
    """What the event loop delivers, kept until the stream reads it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.eof = False
        self.lost = False
        self.exception: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(0)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # the transport closes its side too: nothing more is sent on it

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exception = exc
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the loop delivers something (bytes, an EOF, a loss, room to write)."""
        waiter = self.waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None


class AsyncioStream(ByteStream):
    """One TCP (or TLS) connection as an anyio ``ByteStream``, on asyncio's transport."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False

    def holds_input(self) -> bool:
        """Whether anything arrived that nobody has read: bytes, an EOF or a lost connection."""
        p = self._protocol
        return bool(p.chunks) or p.eof or p.lost

    async def receive(self, max_bytes: int = 65536) -> bytes:
        p = self._protocol
        if p.chunks or self._closed or p.eof or p.lost:
            await checkpoint_if_cancelled()  # a cancelled scope still ends the read here
        else:
            await p.wait()
        if not p.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if p.exception is not None:
                raise anyio.BrokenResourceError from p.exception
            raise anyio.EndOfStream
        chunk = p.chunks.popleft()
        if len(chunk) > max_bytes:
            p.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        p.size -= len(chunk)
        if p.reading_paused and p.size <= _LOW_WATER and not p.lost:
            p.reading_paused = False
            self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        p = self._protocol
        await checkpoint_if_cancelled()
        self._check_writable()
        self._transport.write(item)
        while p.writing_paused:  # the kernel did not take it all: wait until it has
            await p.wait()
            self._check_writable()

    def _check_writable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        p = self._protocol
        if p.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from p.exception

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        # Forcefully, as the pool always closes: no TLS close_notify, nothing waited for.
        self._closed = True
        self._transport.abort()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        transport = self._transport
        return {SocketAttribute.raw_socket: lambda: transport.get_extra_info("socket")}


async def connect(
    host: str, port: int, ssl_context: ssl.SSLContext | None, tls_hostname: str | None
) -> AsyncioStream:
    """A connection to ``host:port`` (TLS with ``ssl_context``, checking ``tls_hostname``),
    trying its addresses with Happy Eyeballs as anyio's ``connect_tcp`` does. Failures raise
    ``OSError``."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        lambda: _Protocol(loop),
        host,
        port,
        ssl=ssl_context,
        server_hostname=tls_hostname if ssl_context is not None else None,
        happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY,
    )
    assert isinstance(transport, asyncio.Transport)
    return AsyncioStream(transport, protocol)
