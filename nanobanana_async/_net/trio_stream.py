"""Connections under Trio: reads and writes straight on the non-blocking socket.

Trio makes every socket operation a full checkpoint: a ``send`` that the kernel took at once
still yields to the scheduler (a cancel-shielded checkpoint), and a ``recv`` first tries the
socket, fails with ``BlockingIOError`` while the answer is on its way, then waits. On a batch's
hot path that is a scheduler round trip per request more than it needs, on top of anyio's
wrapper. :class:`TrioStream` wraps the socket anyio connected: it writes what the kernel takes
without yielding (and waits only when it must); a read yields once, as Trio's do, so that a
request always gives the scheduler a turn. As with anyio's streams, ``send`` and ``receive``
raise in a cancelled scope.

The connection itself (Happy Eyeballs, closing, ``notify_closing``) stays anyio's: the stream
is built from the stream ``anyio.connect_tcp`` returned and closes through it. TLS is anyio's
``TLSStream`` over this stream. Imported only under Trio.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

__all__ = ["TrioStream"]


class TrioStream(ByteStream):
    """``connected`` (an anyio socket stream under Trio), read and written on its raw socket.

    One task at a time reads or writes it, as the pool uses it.
    """

    def __init__(self, connected: SocketStream) -> None:
        self._connected = connected
        self._sock: socket.socket = connected.extra(SocketAttribute.raw_socket)
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await checkpoint_if_cancelled()
        sock = self._sock
        waited = False
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                await wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                raise self._failure(exc) from exc
            if not waited:
                # Every request still yields once, as Trio's own reads do: a server that always
                # answers at once must not let one task run request after request while the
                # scheduler (deadlines, other tasks) never gets a turn.
                await cancel_shielded_checkpoint()
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        await checkpoint_if_cancelled()
        sock = self._sock
        view = memoryview(item)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await wait_writable(sock)
                continue
            except OSError as exc:
                raise self._failure(exc) from exc
            view = view[sent:]

    def _failure(self, exc: OSError) -> Exception:
        if self._closed or self._sock.fileno() < 0:
            return anyio.ClosedResourceError()
        return anyio.BrokenResourceError()

    async def send_eof(self) -> None:
        await self._connected.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self._connected.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._connected.extra_attributes
