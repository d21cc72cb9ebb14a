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
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
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
    ``OSError``.

    The addresses are raced here (:func:`_connected_socket`), not by ``create_connection``'s
    ``happy_eyeballs_delay``: asyncio's race (``staggered_race``) drops a socket that connected
    in the moment its caller was cancelled, open until the garbage collector finds it, and a
    batch cancels connects all the time (``break``, a cancelled scope, a connect timeout).
    """
    loop = asyncio.get_running_loop()
    sock = await _connected_socket(host, port)
    # From here the transport owns the socket: create_connection closes it if the TLS
    # handshake fails or is cancelled.
    transport, protocol = await loop.create_connection(
        lambda: _Protocol(loop),
        sock=sock,
        ssl=ssl_context,
        server_hostname=tls_hostname if ssl_context is not None else None,
    )
    assert isinstance(transport, asyncio.Transport)
    return AsyncioStream(transport, protocol)


Address = tuple[socket.AddressFamily, tuple[Any, ...]]


async def _connected_socket(host: str, port: int) -> socket.socket:
    """A TCP socket connected to one of ``host``'s addresses, raced as anyio's ``connect_tcp``
    races them: the next address is tried once the previous attempt failed or has taken
    ``_HAPPY_EYEBALLS_DELAY``; the first to connect wins and every other one is closed."""
    addresses = await _addresses(host, port)
    if len(addresses) == 1:
        return await _connect_one(*addresses[0])
    winner: socket.socket | None = None
    errors: list[OSError] = []

    async def attempt(address: Address, over: anyio.Event) -> None:
        nonlocal winner
        try:
            sock = await _connect_one(*address)
        except OSError as exc:
            errors.append(exc)
            return
        finally:
            over.set()
        if winner is None:
            winner = sock
            race.cancel_scope.cancel()
        else:
            sock.close()

    try:
        async with anyio.create_task_group() as race:
            for address in addresses:
                over = anyio.Event()
                race.start_soon(attempt, address, over)
                with anyio.move_on_after(_HAPPY_EYEBALLS_DELAY):
                    await over.wait()
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if winner is None:
        if len({str(exc) for exc in errors}) == 1:
            raise errors[0]
        raise OSError("Multiple exceptions: " + ", ".join(str(exc) for exc in errors))
    return winner


async def _addresses(host: str, port: int) -> list[Address]:
    """``host``'s addresses, an IPv6 one first and an IPv4 one second when it has both (as
    anyio orders them). An IP address is used as it is, without a trip to the resolver."""
    infos: Sequence[tuple[socket.AddressFamily, Any, Any, Any, tuple[Any, ...]]]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ordered: list[Address] = []
    v6 = v4 = False
    for family, *_, address in infos:
        if family == socket.AF_INET6 and not v6:
            v6 = True
            ordered.insert(0, (family, address))
        elif family == socket.AF_INET and v6 and not v4:
            v4 = True
            ordered.insert(1, (family, address))
        else:
            ordered.append((family, address))
    return ordered


async def _connect_one(family: socket.AddressFamily, address: tuple[Any, ...]) -> socket.socket:
    """A TCP socket connected to ``address``; closed on any failure, a cancellation included."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock
