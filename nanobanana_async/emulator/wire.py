"""Wire-level faults: a small TCP proxy in front of the served emulator (anyio and h11).

Some of what real servers and proxies do wrong lives below HTTP semantics, where an ASGI app
cannot reach: bytes written after the end of a response (a stray CRLF), or a connection
closed right after a response that never said ``Connection: close``. A client that reuses such
a connection fails its next request after sending it, which for a paid API reads as "may have
been charged". :class:`WireProxy` forwards bytes both ways unchanged, follows the HTTP/1.1
messages with h11 (one parser per direction, each told what the other saw), and at the end of
each response draws, from its own seeded generator, whether to misbehave (:class:`WireFaults`).

Each fault is written so that a careful client can see it before reusing the connection: stray
bytes go out in the same write as the end of the response, and a close is sent with it (the
last segment carries the FIN, where the platform can cork a socket). A client that still sends
on such a connection has a bug, not bad luck. Enable it through
``serve(emulator, wire=WireFaults(...))``; :class:`WireStats` counts what it did.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import h11
from anyio.abc import SocketAttribute, SocketStream

__all__ = ["WireFaults", "WireProxy", "WireStats"]

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def _check_rate(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a number in [0, 1], got {value!r}")


def _check_stray(_instance: object, _attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or not value:
        raise ValueError(f"stray_bytes must be non-empty bytes, got {value!r}")


@attrs.frozen
class WireFaults:
    """What the proxy does wrong, and how often, after each complete response.

    - ``stray_bytes_rate``: share of responses followed by ``stray_bytes`` (a CRLF by default,
      as some servers write after a body) on a connection that stays open.
    - ``close_after_response_rate``: share of responses after which the connection is closed
      although the response kept it alive (no ``Connection: close``).

    Both are drawn for every response, in order, from a generator seeded with ``seed``.
    Responses that already end their connection are forwarded as they are.
    """

    stray_bytes_rate: float = attrs.field(default=0.0, validator=_check_rate)
    close_after_response_rate: float = attrs.field(default=0.0, validator=_check_rate)
    stray_bytes: bytes = attrs.field(default=b"\r\n", validator=_check_stray)
    seed: int | None = None


@attrs.define
class WireStats:
    """What a :class:`WireProxy` did (``RunningEmulator.wire``); updated live.

    Attributes:
        connections: client connections accepted.
        responses: complete responses forwarded to clients.
        stray_bytes_sent: responses followed by stray bytes.
        closed_after_response: connections closed after a response that kept them alive.
    """

    connections: int = 0
    responses: int = 0
    stray_bytes_sent: int = 0
    closed_after_response: int = 0


def _cork(stream: SocketStream) -> None:
    # Corked, the end of the response waits in the kernel until shutdown() sends it with the
    # FIN in one segment: the client cannot read the response and still find the socket open.
    sock = stream.extra(SocketAttribute.raw_socket)
    if hasattr(socket, "TCP_CORK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)


class _Link:
    """One client connection and its own upstream connection."""

    def __init__(self, proxy: WireProxy, client: SocketStream, upstream: SocketStream) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        # Requests as the server sees them, responses as the client sees them; each side's
        # events are replayed into the other parser so both follow the same cycle.
        self.requests = h11.Connection(h11.SERVER)
        self.responses = h11.Connection(h11.CLIENT)
        self.tracking = True  # off after anything h11 rejects: then a plain pipe
        self.cycle = anyio.Event()

    def _mirror(self, into: h11.Connection, event: Any) -> None:
        try:
            into.send(event)
        except h11.LocalProtocolError:
            self.tracking = False

    async def pump_requests(self) -> None:
        """Client to upstream, unchanged; requests are parsed first so responses have them."""
        while True:
            try:
                data = await self.client.receive()
            except anyio.EndOfStream:
                data = b""
            if self.tracking:
                await self._follow_request(data)
            if not data:
                await self.upstream.send_eof()
                return
            await self.upstream.send(data)

    async def _follow_request(self, data: bytes) -> None:
        conn = self.requests
        conn.receive_data(data)
        while self.tracking:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self.tracking = False
                return
            if event is h11.PAUSED:  # a pipelined request: wait for the response to end
                await self.cycle.wait()
                continue
            if event is h11.NEED_DATA or type(event) is h11.ConnectionClosed:
                return
            self._mirror(self.responses, event)

    async def pump_responses(self) -> None:
        """Upstream to client; at the end of each response, maybe misbehave."""
        while True:
            try:
                data = await self.upstream.receive()
            except anyio.EndOfStream:
                data = b""
            start = 0
            if self.tracking:
                for end in self._response_ends(data):
                    closed = await self._end_of_response(data[start:end])
                    start = end
                    if closed:
                        return
            if not data:
                return  # upstream closed: so does the client connection, on return
            if start < len(data):
                await self.client.send(data[start:])

    def _response_ends(self, data: bytes) -> list[int]:
        """Offsets in ``data`` just past each response that ends in it."""
        conn = self.responses
        conn.receive_data(data)
        ends: list[int] = []
        while self.tracking:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self.tracking = False
                break
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if type(event) is h11.ConnectionClosed:
                break
            self._mirror(self.requests, event)
            if type(event) is h11.EndOfMessage:
                ends.append(len(data) - len(conn.trailing_data[0]))
                if not self._start_next_cycle():
                    break
        return ends

    def _start_next_cycle(self) -> bool:
        """Both parsers move on to the next request; False when the connection ends here."""
        a, b = self.requests, self.responses
        if not (a.our_state is a.their_state is b.our_state is b.their_state is h11.DONE):
            self.tracking = False
            return False
        a.start_next_cycle()
        b.start_next_cycle()
        self.cycle.set()
        self.cycle = anyio.Event()
        return True

    async def _end_of_response(self, tail: bytes) -> bool:
        """Forward the rest of a response with its faults; True when the connection closed."""
        stats, faults, rng = self.proxy.stats, self.proxy.faults, self.proxy.random
        stats.responses += 1
        stray = rng.random() < faults.stray_bytes_rate
        close = rng.random() < faults.close_after_response_rate
        if not self.tracking:  # the response ended the connection itself: no fault to add
            await self.client.send(tail)
            return False
        if stray:
            tail += faults.stray_bytes
            stats.stray_bytes_sent += 1
        if not close:
            await self.client.send(tail)
            return False
        _cork(self.client)
        await self.client.send(tail)
        await self.client.send_eof()
        stats.closed_after_response += 1
        return True


class WireProxy:
    """Forwards loopback connections to ``upstream`` (host, port) with :class:`WireFaults`."""

    def __init__(self, faults: WireFaults, upstream: tuple[str, int]) -> None:
        self.faults = faults
        self.upstream = upstream
        self.stats = WireStats()
        self.random = random.Random(faults.seed)

    async def handle(self, client: SocketStream) -> None:
        """Serve one client connection until either side closes it."""
        self.stats.connections += 1
        async with client:
            try:
                upstream = await anyio.connect_tcp(*self.upstream)
            except OSError:
                return
            async with upstream:
                link = _Link(self, client, upstream)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(link.pump_requests)
                        await link.pump_responses()
                        tg.cancel_scope.cancel()
                except* _GONE:
                    pass  # either side went away: both connections close here

    @contextlib.asynccontextmanager
    async def listening(self, host: str, port: int = 0) -> AsyncIterator[int]:
        """Accept connections on ``host:port`` for the duration of the block; yields the port."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self.handle)
            try:
                yield int(listener.extra(SocketAttribute.local_port))
            finally:
                tg.cancel_scope.cancel()
