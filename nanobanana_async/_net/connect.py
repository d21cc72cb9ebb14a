"""Opening a connection on whichever loop runs, and asking whether it holds unread input.

On asyncio, :class:`~nanobanana_async._net.asyncio_stream.AsyncioStream` (asyncio's own TLS
when asked); under Trio, :class:`~nanobanana_async._net.trio_stream.TrioStream` with anyio's
``TLSStream`` over it. Each module is imported on its own loop only.
"""

from __future__ import annotations

import socket
import ssl

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute, TLSStream

from .idle import is_readable
from .loop import running_loop

__all__ = ["connect", "has_unread_input"]


async def connect(
    host: str, port: int, ssl_context: ssl.SSLContext | None = None, tls_hostname: str | None = None
) -> ByteStream:
    """A TCP connection to ``host:port``, over TLS with ``ssl_context`` (checking
    ``tls_hostname``, else ``host``; no close_notify is required of the peer). Failures raise
    ``OSError`` (``ssl.SSLError`` included); the caller bounds the time."""
    tls_hostname = tls_hostname or host
    if running_loop() is not None:
        from .asyncio_stream import connect as connect_on_asyncio  # not under Trio

        return await connect_on_asyncio(host, port, ssl_context, tls_hostname)
    from .trio_stream import TrioStream  # Trio only: not on asyncio

    connected = await anyio.connect_tcp(host, port)
    if ssl_context is None:
        return TrioStream(connected)
    try:
        return await TLSStream.wrap(
            TrioStream(connected),
            hostname=tls_hostname,
            ssl_context=ssl_context,
            standard_compatible=False,
        )
    except BaseException:
        await anyio.aclose_forcefully(connected)
        raise


def has_unread_input(stream: object, sock: socket.socket | None) -> bool:
    """Whether anything arrived on an idle connection that no answer claims: bytes, an EOF or
    a reset, held by the stream layers above the socket or still in the socket (``sock``)."""
    return _holds_read_ahead(stream) or is_readable(sock)


def _holds_read_ahead(stream: object) -> bool:
    """Whether the stream layers above the socket hold received bytes nobody has read.

    On asyncio the event loop reads ahead into
    :class:`~nanobanana_async._net.asyncio_stream.AsyncioStream`, which says so. Under Trio,
    anyio's TLS stream keeps records it has not decrypted yet, which the socket's poll does not
    see: no public accessor exists, so this reads them by name; a missing name means "nothing
    kept" (tests/_http/test_leftover_bytes.py checks the names on the installed anyio).
    """
    holds_input = getattr(stream, "holds_input", None)  # AsyncioStream's own account
    if holds_input is not None:
        return bool(holds_input())
    while isinstance(stream, TLSStream):
        incoming = getattr(stream, "_read_bio", None)
        if stream.extra(TLSAttribute.ssl_object).pending() or getattr(incoming, "pending", 0):
            return True
        stream = stream.transport_stream
    return False
