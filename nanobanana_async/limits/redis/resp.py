"""The Redis client of the shared limits: one RESP2 connection on anyio streams.

RedisLimits needs a handful of commands (its scripts, ``CONFIG GET``, ``INFO``, ``AUTH``,
``SELECT``), one at a time per connection: its coalescer sends one batch at a time. A general
client costs several times the CPU per call for what RedisLimits does not use (measured on a
2-core machine, sequential script calls to a local Redis: coredis 6.9 about 280 us of client
CPU per call through its client and 160 us through one of its connections, a plain RESP
exchange on an anyio stream 25-50 us), and at concurrency 128 a batch makes hundreds of calls
a second. A connection is plain data: no task of its own, so whoever holds it owns its
lifetime.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from ..._net.connect import connect, has_unread_input

__all__ = ["Connection", "ProtocolError", "ReplyError", "Target"]

Arg = str | int | float | bytes


class ReplyError(Exception):
    """An error reply of Redis (``ERR ...``, ``NOSCRIPT ...``, ``NOPERM ...``)."""

    @property
    def code(self) -> str:
        """The error's first word (``ERR``, ``NOSCRIPT``, ``WRONGPASS``...)."""
        return str(self).partition(" ")[0]


class ProtocolError(Exception):
    """Bytes that are not RESP: whatever answered is not Redis (or the stream is out of step)."""


@attrs.frozen
class Target:
    """Where Redis is and how to log in."""

    host: str | None
    port: int
    path: str | None  # a unix socket, instead of host and port
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    client_name: str | None = None


class _More(Exception):
    """The buffer ends inside a reply: read on."""


def encode(args: Sequence[Arg]) -> bytes:
    """``args`` as one RESP command (an array of bulk strings)."""
    # The common case, ASCII text and numbers, built as one string: lengths in characters
    # are lengths in bytes there. (A script call carries hundreds of arguments.)
    parts = [f"*{len(args)}\r\n"]
    for arg in args:
        text = arg if type(arg) is str else None if type(arg) is bytes else str(arg)
        if text is None or not text.isascii():
            return _encode_bytes(args)
        parts.append(f"${len(text)}\r\n{text}\r\n")
    return "".join(parts).encode()


def _encode_bytes(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buffer: bytes | bytearray, pos: int = 0) -> tuple[Any, int]:
    """The reply starting at ``pos`` and where it ends; :class:`_More` when it is cut.

    Strings are decoded (everything RedisLimits reads is text); an error inside an array is a
    :class:`ReplyError` in its place. Bytes that are not RESP raise :class:`ProtocolError`.
    """
    try:
        return _parse(buffer, pos)
    except ValueError:  # a length or an integer that is not a number
        raise ProtocolError(f"not a RESP reply: {bytes(buffer[pos : pos + 20])!r}") from None


def _parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _More
    kind, line = buffer[pos], bytes(buffer[pos + 1 : end])
    if kind == 0x2B:  # +simple string
        return line.decode(), end + 2
    if kind == 0x2D:  # -error
        return ReplyError(line.decode(errors="replace")), end + 2
    if kind == 0x3A:  # :integer
        return int(line), end + 2
    if kind == 0x24:  # $bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        start = end + 2
        if len(buffer) < start + size + 2:
            raise _More
        return bytes(buffer[start : start + size]).decode(errors="replace"), start + size + 2
    if kind == 0x2A:  # *array
        count = int(line)
        if count < 0:
            return None, end + 2
        pos = end + 2
        items = []
        for _ in range(count):
            item, pos = _parse(buffer, pos)
            items.append(item)
        return items, pos
    raise ProtocolError(f"not a RESP reply: {bytes(buffer[pos : pos + 20])!r}")


class Connection:
    """One connection to Redis, logged in and on its database.

    Not for concurrent use: one command at a time (its holder serialises). After any failure
    but an error reply (a timeout, a cancellation, a reset) the stream is out of step: close it.
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        # Looked up once: anyio builds every extra attribute of a stream on each lookup.
        self._socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)

    @classmethod
    async def open(cls, target: Target) -> Connection:
        """Connect, log in and select the database (the caller bounds the time)."""
        stream: anyio.abc.ByteStream
        if target.path is not None:
            stream = await anyio.connect_unix(target.path)
        else:
            # Redis closes without a TLS close_notify: connect() requires none.
            stream = await connect(target.host or "localhost", target.port, target.tls)
        connection = cls(stream)
        try:
            if target.password is not None:
                login = [target.username] if target.username else []
                await connection.call("AUTH", *login, target.password)
            if target.db:
                await connection.call("SELECT", target.db)
            if target.client_name:
                await connection.call("CLIENT", "SETNAME", target.client_name)
        except BaseException:
            await connection.aclose()
            raise
        return connection

    def stale(self) -> bool:
        """Whether Redis closed this idle connection (it has something to read: an EOF, as
        after a restart). Asked before reuse: a command sent on it would fail after it left,
        and then nobody knows whether it ran."""
        return has_unread_input(self._stream, self._socket)

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply; an error reply raises :class:`ReplyError`."""
        await self._stream.send(encode(args))
        reply = await self._read()
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def _read(self) -> Any:
        buffer = self._buffer
        while True:
            if buffer:
                try:
                    reply, end = parse(buffer)
                except _More:
                    pass
                else:
                    del buffer[:end]
                    return reply
            buffer += await self._stream.receive()

    async def aclose(self) -> None:
        """Close the stream (at once: nothing is waited for)."""
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stream)
