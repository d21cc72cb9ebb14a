"""The streams the h11 pool opens (``_net/asyncio_stream.py`` on asyncio,
``_net/trio_stream.py`` under Trio): waiting when the kernel cannot take a write, EOF and
resets, cancellation and closing, against a loopback peer; on asyncio, flow control of reads.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute, SocketStream

from nanobanana_async._http.h11_pool import H11Transport
from nanobanana_async._net import asyncio_stream
from nanobanana_async._net.asyncio_stream import AsyncioStream

pytestmark = pytest.mark.anyio

Peer = Callable[[SocketStream], Awaitable[None]]


asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


async def pool_stream(port: int) -> ByteStream:
    """A connection to ``port`` as the pool opens it."""
    conn = await H11Transport()._connect((b"http", "127.0.0.1", port), None)
    return conn.stream


@asynccontextmanager
async def connected(peer: Peer) -> AsyncIterator[ByteStream]:
    """A stream to a loopback listener whose one connection ``peer`` serves."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def serve(peer_stream: SocketStream) -> None:
        async with peer_stream:
            await peer(peer_stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        stream = await pool_stream(port)
        try:
            yield stream
        finally:
            await stream.aclose()
            tg.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (state of a protocol, not an event)
            await anyio.sleep(0.005)


@asyncio_only
async def test_reading_stops_while_much_is_unread_and_resumes_as_it_is_read() -> None:
    size = 4 << 20
    data = bytes(range(256)) * (size // 256)

    async def flood(stream: SocketStream) -> None:
        await stream.send(data)
        await anyio.sleep_forever()

    async with connected(flood) as stream:
        assert isinstance(stream, AsyncioStream)
        protocol = stream._protocol
        await until(lambda: protocol.reading_paused)
        await anyio.sleep(0.1)  # the peer keeps sending: nothing more is taken in
        assert protocol.size < 2 * asyncio_stream._HIGH_WATER
        received = bytearray()
        while len(received) < size:
            received += await stream.receive()
        assert received == data
        assert not protocol.reading_paused


async def test_a_send_the_kernel_cannot_take_waits_and_a_cancelled_scope_ends_it(
    anyio_backend: str,
) -> None:
    # A listener nobody accepts from or reads: the kernel takes a few buffers' worth, then the
    # send must wait (an event loop's reader would drain it, hence a bare socket).
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stream = await pool_stream(listener.getsockname()[1])
        try:
            with anyio.move_on_after(0.5) as scope:
                await stream.send(b"x" * (64 << 20))
            assert scope.cancelled_caught
        finally:
            await stream.aclose()


@asyncio_only
async def test_bytes_and_an_eof_that_arrive_unread_are_held_and_read_in_order() -> None:
    async def says_hi_and_closes(stream: SocketStream) -> None:
        await stream.send(b"hello")
        await stream.aclose()

    async with connected(says_hi_and_closes) as stream:
        assert isinstance(stream, AsyncioStream)
        await until(lambda: stream._protocol.eof)
        assert stream.holds_input()
        assert await stream.receive(2) == b"he"  # the rest stays for the next read
        assert await stream.receive() == b"llo"
        assert stream.holds_input()  # the EOF
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()


async def test_an_eof_ends_reads(anyio_backend: str) -> None:
    async def says_hi_and_closes(stream: SocketStream) -> None:
        await stream.send(b"hello")
        await stream.aclose()

    async with connected(says_hi_and_closes) as stream:
        received = b""
        while len(received) < 5:
            received += await stream.receive()
        assert received == b"hello"
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()


async def test_a_reset_is_a_broken_stream_for_reads_and_writes(anyio_backend: str) -> None:
    async def resets(stream: SocketStream) -> None:
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    async with connected(resets) as stream:
        await anyio.sleep(0.1)  # the reset arrives
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")


async def test_a_cancelled_scope_ends_a_read_even_with_bytes_waiting(anyio_backend: str) -> None:
    async def sends(stream: SocketStream) -> None:
        await stream.send(b"abc")
        await anyio.sleep_forever()

    async with connected(sends) as stream:
        await anyio.sleep(0.1)  # the bytes arrive
        with anyio.CancelScope() as scope:
            scope.cancel()
            await stream.receive()
        assert scope.cancelled_caught
        assert await stream.receive() == b"abc"  # nothing was taken


async def test_a_closed_stream_refuses_reads_and_writes_and_gives_its_socket(
    anyio_backend: str,
) -> None:
    async def waits(stream: SocketStream) -> None:
        await anyio.sleep_forever()

    async with connected(waits) as stream:
        assert stream.extra(SocketAttribute.raw_socket).fileno() >= 0
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")
