"""A raw HTTP/1.1 server on loopback that writes exactly the bytes a test gives it.

For wire-level behaviour an ASGI server will not produce (stray bytes after a body, a body
compressed against the client's wishes): each request (head, then a ``Content-Length`` body)
is answered with ``answer(head)`` in one write, on connections kept open until the client
closes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

import anyio
import attrs
from anyio.abc import SocketAttribute, SocketStream

__all__ = ["LoopbackServer", "Serves", "loopback_server", "serving"]

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


def _content_length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 0


@attrs.define
class LoopbackServer:
    """Counts the requests it answered and the connections it accepted."""

    answer: Callable[[bytes], bytes]
    port: int = 0
    requests: int = 0
    connections: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        buffer = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    length = _content_length(head)
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    buffer = buffer[length:]
                    self.requests += 1
                    await stream.send(self.answer(head))
            except _GONE:
                return


class Serves(Protocol):
    """A test server: handles each accepted connection; told the port it listens on."""

    port: int

    async def handle(self, stream: SocketStream) -> None: ...


S = TypeVar("S", bound=Serves)


@asynccontextmanager
async def serving(server: S) -> AsyncIterator[S]:
    """``server.handle`` on a free loopback port (set on ``server.port``) for the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(SocketAttribute.local_port)
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
