"""H11Transport: the lean HTTP/1.1 transport FastTransport uses on asyncio and Trio.

Against the emulator over loopback (success, reuse, 5xx) and against a raw loopback server
that misbehaves on purpose (drops, hangs, chunked bodies, garbage, idle closes), on asyncio
and Trio. The raw server counts the connections it accepted and saw closed, so a leaked or
wrongly reused connection shows as a count.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Literal

import anyio
import attrs
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from nanobanana_async._http.fast import FastTransport
from nanobanana_async._http.h11_pool import H11Transport
from nanobanana_async.emulator import GENERATE_PATH, Emulator, Faults, serve
from tests.support.http_server import serving

pytestmark = pytest.mark.anyio

KEY = "nb-h11-0123456789abcdef"
BODY = {"prompt": "a banana", "model": "gemini-2.5-flash-image", "image_size": "1:1", "num": 1}
HEADERS = {"Authorization": f"Bearer {KEY}"}

Behaviour = Literal["ok", "chunked", "big", "drop", "hang", "garbage", "close-after"]
BIG = 1 << 20


@attrs.define
class RawServer:
    """A loopback HTTP/1.1 server answering every request as ``behaviour`` says."""

    behaviour: Behaviour
    port: int = 0
    accepted: int = 0
    closed: int = 0
    requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/x"

    @property
    def open(self) -> int:
        return self.accepted - self.closed

    async def handle(self, stream: SocketStream) -> None:
        self.accepted += 1
        try:
            async with stream:
                await self._serve(stream)
        finally:
            self.closed += 1

    async def _serve(self, stream: SocketStream) -> None:
        buffer = b""
        while True:
            try:
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive()
                _, _, buffer = buffer.partition(b"\r\n\r\n")  # GET requests: no body
                self.requests += 1
                if self.behaviour == "drop":
                    return
                if self.behaviour == "hang":
                    # Until the client goes away: an EOF ends the wait.
                    while True:
                        buffer += await stream.receive()
                await stream.send(self._answer())
                if self.behaviour == "close-after":
                    return  # an idle close, without "Connection: close"
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    def _answer(self) -> bytes:
        if self.behaviour == "garbage":
            return b"this is not HTTP\r\n\r\n"
        if self.behaviour == "chunked":
            chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (b"ab", b"cde"))
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        data = b"x" * BIG if self.behaviour == "big" else b"hello"
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(data) + data


def raw_server(behaviour: Behaviour) -> AbstractAsyncContextManager[RawServer]:
    return serving(RawServer(behaviour))


async def settle(server: RawServer, open_connections: int) -> None:
    """Give the server's tasks a moment to see closes (no timing assertion: a bounded wait)."""
    for _ in range(100):
        if server.open == open_connections:
            return
        await anyio.sleep(0.01)


# -- against the emulator -------------------------------------------------------------------


async def test_requests_succeed_and_reuse_one_connection(anyio_backend: str) -> None:
    with serve(Emulator(keys={KEY: 1000}, seed=1), "127.0.0.1", 0) as running:
        url = str(running.base_url).rstrip("/") + GENERATE_PATH
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(5):
                response = await client.post(url, json=BODY, headers=HEADERS)
                assert response.status_code == 200
                assert response.json()["code"] == 0
            assert transport.connections_opened == 1
            assert transport.idle_connections == 1

            async def one() -> None:
                response = await client.post(url, json=BODY, headers=HEADERS)
                assert response.json()["code"] == 0

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(one)
            # Eight at once need eight connections, one of them the idle one: never more.
            assert 2 <= transport.connections_opened <= 8
            assert transport.idle_connections == transport.connections_opened
        assert transport.idle_connections == 0


async def test_a_5xx_is_a_response_and_keeps_the_connection(anyio_backend: str) -> None:
    faults = Faults(server_error_rate=1.0, html_error_share=0.0)
    with serve(Emulator(keys={KEY: 1000}, faults=faults, seed=2), "127.0.0.1", 0) as running:
        url = str(running.base_url).rstrip("/") + GENERATE_PATH
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                response = await client.post(url, json=BODY, headers=HEADERS)
                assert response.status_code == 500
                assert response.json()["code"] == 500
        assert transport.connections_opened == 1


# -- failures, against a raw server ---------------------------------------------------------


async def test_nothing_listening_is_a_connect_error(anyio_backend: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    async with httpx.AsyncClient(transport=H11Transport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_drop_after_the_request_is_a_read_side_error(anyio_backend: str) -> None:
    async with raw_server("drop") as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await client.get(server.url)
            assert transport.idle_connections == 0
        assert server.requests == 1


async def test_garbage_is_a_remote_protocol_error(anyio_backend: str) -> None:
    async with raw_server("garbage") as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(server.url)
        assert transport.idle_connections == 0
        await settle(server, 0)
        assert server.open == 0


async def test_a_silent_server_is_a_read_timeout_and_the_connection_is_closed(
    anyio_backend: str,
) -> None:
    async with raw_server("hang") as server:
        transport = H11Transport()
        timeout = httpx.Timeout(5.0, read=0.2)
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(server.url)
            assert transport.idle_connections == 0
            await settle(server, 0)
            assert (server.accepted, server.open) == (1, 0)


async def test_a_chunked_body_is_read_and_the_connection_reused(anyio_backend: str) -> None:
    async with raw_server("chunked") as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                response = await client.get(server.url)
                assert response.content == b"abcde"
        assert transport.connections_opened == server.accepted == 1
        assert server.requests == 3


async def test_a_body_closed_early_closes_its_connection(anyio_backend: str) -> None:
    async with raw_server("big") as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            # The transport's own stream (httpx's iterators are async generators that Trio
            # would report as unfinished when left early).
            response = await transport.handle_async_request(httpx.Request("GET", server.url))
            assert isinstance(response.stream, httpx.AsyncByteStream)
            async for chunk in response.stream:
                assert chunk
                break
            await response.stream.aclose()
            assert transport.idle_connections == 0
            await settle(server, 0)
            assert (server.accepted, server.open) == (1, 0)
            # Read to the end, the next one goes back to the pool.
            assert len((await client.get(server.url)).content) == BIG
            assert transport.idle_connections == 1
        assert transport.connections_opened == 2


async def test_cancelling_a_request_leaves_no_connection_open(anyio_backend: str) -> None:
    async with raw_server("hang") as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            with anyio.move_on_after(0.2) as scope:
                await client.get(server.url)
            assert scope.cancelled_caught
            assert transport.idle_connections == 0
            await settle(server, 0)
            assert (server.accepted, server.open) == (1, 0)


async def test_cancelling_a_body_read_leaves_no_connection_open(anyio_backend: str) -> None:
    async with raw_server("big") as server:
        transport = H11Transport()
        response = await transport.handle_async_request(httpx.Request("GET", server.url))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        chunks = 0
        with anyio.CancelScope() as scope:
            async for _ in response.stream:  # the next read after this one is cancelled
                chunks += 1
                scope.cancel()
        assert scope.cancelled_caught
        assert chunks == 1
        await response.stream.aclose()
        assert transport.idle_connections == 0
        await settle(server, 0)
        assert (server.accepted, server.open) == (1, 0)


async def test_aclose_closes_every_idle_connection(anyio_backend: str) -> None:
    async with raw_server("ok") as server:
        transport = H11Transport()
        client = httpx.AsyncClient(transport=transport)

        async def one() -> None:
            assert (await client.get(server.url)).content == b"hello"

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        assert transport.idle_connections == server.accepted >= 2
        await client.aclose()
        assert transport.idle_connections == 0
        await settle(server, 0)
        assert server.open == 0


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    anyio_backend: str,
) -> None:
    # The server closes after each answer without saying so: reusing it would fail the next
    # request after sending it ("may have been charged"). The readable socket gives it away.
    async with raw_server("close-after") as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.get(server.url)).content == b"hello"
                await settle(server, 0)  # the server's close has happened
        assert transport.connections_opened == server.accepted == 3
        assert server.requests == 3


async def test_expired_idle_connections_are_not_reused(anyio_backend: str) -> None:
    async with raw_server("ok") as server:
        transport = H11Transport(keepalive_expiry=0.0)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.get(server.url)).content == b"hello"
                await anyio.sleep(0.01)
        assert transport.connections_opened == 3
        await settle(server, 0)
        assert server.open == 0


async def test_https_does_a_tls_handshake(anyio_backend: str) -> None:
    # No certificate at hand: a plain-HTTP server answering the ClientHello cannot complete a
    # handshake, which shows the https path really speaks TLS and fails as a connect error.
    hellos: list[bytes] = []

    async def plain_http(stream: SocketStream) -> None:
        async with stream:
            hellos.append(await stream.receive())
            await stream.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, plain_http)
        async with httpx.AsyncClient(transport=H11Transport(verify=False)) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/x")
        tg.cancel_scope.cancel()
    assert len(hellos) == 1
    assert hellos[0][:1] == b"\x16"  # a TLS handshake record


async def test_an_unsupported_scheme_is_refused(anyio_backend: str) -> None:
    transport = H11Transport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))


async def test_the_fast_transport_uses_it_on_both_loops(anyio_backend: str) -> None:
    async with raw_server("ok") as server:
        fast = FastTransport()
        async with fast, httpx.AsyncClient(transport=fast) as client:
            for _ in range(3):
                assert (await client.get(server.url)).content == b"hello"
            assert fast._h11 is not None
            assert fast._h11.connections_opened == 1  # every request went through its pool
        assert server.accepted == 1
        await settle(server, 0)
        assert server.open == 0
