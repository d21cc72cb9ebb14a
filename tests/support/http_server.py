"""A raw HTTP/1.1 server on loopback that writes exactly the bytes a test gives it.

For wire-level behaviour an ASGI server will not produce (stray bytes after a body, a body
compressed against the client's wishes): each request (head, then a ``Content-Length`` body)
is answered with ``answer(head)`` in one write, on connections kept open until the client
closes them.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
import attrs
from anyio.abc import Listener, SocketAttribute, SocketStream
from anyio.streams.tls import TLSListener

__all__ = [
    "ClosingServer",
    "LoopbackServer",
    "RequestReader",
    "Serves",
    "loopback_server",
    "read_request",
    "serving",
]

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


def _content_length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 0


class RequestReader:
    """Reads the requests a client sends on one connection: each head, its body skipped."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> bytes | None:
        """The next request's head, or None when the client closed the connection."""
        try:
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += await self.stream.receive()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            length = _content_length(head)
            while len(self.buffer) < length:
                self.buffer += await self.stream.receive()
        except _GONE:
            return None
        self.buffer = self.buffer[length:]
        return head


async def read_request(stream: SocketStream) -> bytes | None:
    """The head of one request on ``stream`` (None when the client closed it); only for
    servers that answer before the client sends the next request."""
    return await RequestReader(stream).next()


class _OnLoopback:
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@attrs.define
class LoopbackServer(_OnLoopback):
    """Counts the requests it answered and the connections it accepted."""

    answer: Callable[[bytes], bytes]
    port: int = 0
    requests: int = 0
    connections: int = 0

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        reader = RequestReader(stream)
        async with stream:
            while (head := await reader.next()) is not None:
                self.requests += 1
                try:
                    await stream.send(self.answer(head))
                except _GONE:
                    return


class Serves(Protocol):
    """A test server: handles each accepted connection; told the port it listens on."""

    port: int

    async def handle(self, stream: SocketStream) -> None: ...


S = TypeVar("S", bound=Serves)


@asynccontextmanager
async def serving(server: S, tls: ssl.SSLContext | None = None) -> AsyncIterator[S]:
    """``server.handle`` on a free loopback port (set on ``server.port``) for the block, over
    TLS with ``tls`` (a server context)."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = tcp.extra(SocketAttribute.local_port)
    listener: Listener[Any] = tcp
    if tls is not None:
        listener = TLSListener(tcp, tls, standard_compatible=False)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def loopback_server(
    answer: Callable[[bytes], bytes],
) -> AbstractAsyncContextManager[LoopbackServer]:
    """Serve ``answer`` on a free loopback port for the duration of the block."""
    return serving(LoopbackServer(answer))


def _idempotency_key(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "idempotency-key":
            return value.strip()
    return ""


_OK = b'{"code":0,"message":"ok","data":{"url":"http://127.0.0.1:9/images/1.png"}}'


@attrs.define
class ClosingServer(_OnLoopback):
    """A generate API that closes each connection after one answer, without saying so.

    The first request on a connection is answered (HTTP/1.1, keep-alive implied, no
    ``Connection: close``); the next request on it is never handled: the server reads it and
    closes the connection (``mode="eof"``: a FIN), resets it (``"reset"``: an RST), or sends
    the first bytes of a status line and then closes (``"partial"``: the client has part of an
    answer). ``mode="fresh"`` closes every connection, new ones included, under their first
    request. The race a real server of this kind loses only sometimes (the client reuses the
    connection before the FIN arrives) is lost here every time.

    ``answered`` holds the ``Idempotency-Key`` of every request handled, ``dropped`` those of
    the requests it closed the connection under without handling them.
    """

    mode: str = "eof"
    port: int = 0
    connections: int = 0
    answered: list[str] = attrs.Factory(list)
    dropped: list[str] = attrs.Factory(list)

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        reader = RequestReader(stream)
        async with stream:
            if self.mode != "fresh":
                head = await reader.next()
                if head is None:
                    return
                self.answered.append(_idempotency_key(head))
                answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                answer += b"Content-Length: %d\r\n\r\n%s" % (len(_OK), _OK)
                try:
                    await stream.send(answer)
                except _GONE:
                    return
            head = await reader.next()
            if head is None:
                return
            self.dropped.append(_idempotency_key(head))
            try:
                if self.mode == "partial":
                    await stream.send(b"HTTP/1.1 20")
                elif self.mode == "reset":
                    sock = stream.extra(SocketAttribute.raw_socket)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except _GONE:
                return
