"""Generate requests over TLS through the SDK's own transport, on asyncio and Trio.

The real API is https: the h11 pool speaks TLS through asyncio's own TLS transport on asyncio
and anyio's TLS stream under Trio. Against a loopback TLS server whose certificate a test CA
(trustme) issued: answers are read, connections reused, a connection the server closed under a
request costs no call, stray bytes after a body fail nothing, and a certificate nobody trusts
is a connection error before anything is sent.
"""

from __future__ import annotations

import json
import ssl

import pytest
import trustme

from nanobanana_async import APIConnectionError, AsyncNanoBanana
from nanobanana_async._http.fast import FastTransport
from tests.support.http_server import ClosingServer, LoopbackServer, serving

pytestmark = pytest.mark.anyio

KEY = "nb-tls-0123456789abcdef"
URL = "https://cdn.test/a.png"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def answer(stray: bytes = b"") -> bytes:
    body = json.dumps({"code": 0, "message": "ok", "data": {"url": URL}}).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body + stray


def client(port: int, context: ssl.SSLContext) -> AsyncNanoBanana:
    return AsyncNanoBanana(
        KEY,
        base_url=f"https://127.0.0.1:{port}",
        transport=FastTransport(verify=context),
        max_retries=0,
    )


async def test_answers_are_read_and_one_connection_carries_every_call(
    anyio_backend: str, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with serving(LoopbackServer(lambda _head: answer()), tls=server_tls) as server:
        async with client(server.port, client_tls) as nb:
            for _ in range(3):
                assert (await nb.generate("a banana")).urls == (URL,)
            report = await nb.run_batch([f"p{i}" for i in range(8)], concurrency=2)
        assert report.succeeded == 8
        assert server.requests == 11
        assert server.connections <= 2  # the first one, and one more for the second slot


async def test_stray_bytes_after_a_body_fail_no_call(
    anyio_backend: str, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with serving(LoopbackServer(lambda _head: answer(b"\r\n")), tls=server_tls) as server:
        async with client(server.port, client_tls) as nb:
            for _ in range(4):
                assert (await nb.generate("a banana")).urls == (URL,)
        assert server.requests == 4  # no retry hid a failure
        assert server.connections == 4  # none was reused with bytes waiting on it


async def test_a_connection_closed_under_a_request_costs_no_call(
    anyio_backend: str, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with serving(ClosingServer(mode="eof"), tls=server_tls) as server:
        async with client(server.port, client_tls) as nb:
            for _ in range(4):
                await nb.generate("a banana")
        assert len(server.answered) == 4
        # Each dropped request was sent once more, with its key, on a new connection.
        assert set(server.dropped) <= set(server.answered)


async def test_a_certificate_nobody_trusts_is_a_connection_error(
    anyio_backend: str, server_tls: ssl.SSLContext
) -> None:
    async with serving(LoopbackServer(lambda _head: answer()), tls=server_tls) as server:
        async with client(server.port, ssl.create_default_context()) as nb:
            with pytest.raises(APIConnectionError, match="certificate verify failed") as caught:
                await nb.generate("a banana")
        assert not caught.value.may_have_been_charged
        assert server.requests == 0
