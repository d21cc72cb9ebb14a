"""Every path decodes a compressed answer as httpx does (issue 11, finding 10).

The SDK asks for ``identity`` on its direct path, but a server (or a proxy) may compress
anyway. A compressed JSON success must be a success on every transport, a body that
does not decode the same "may have been charged" connection error httpx gives (the answer
was lost after the server acted), and a compressed body over the size cap a refused answer
without its decoded size ever sitting in memory.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Callable

import httpx
import pytest

from nanobanana_async import APIConnectionError, AsyncNanoBanana, MalformedResponseError
from nanobanana_async._http.fast import FastTransport
from nanobanana_async.generate_request import MAX_RESPONSE_BYTES
from tests.support.http_server import loopback_server
from tests.support.unfinished import unfinished_generators

pytestmark = pytest.mark.anyio

KEY = "nb-encoding-0123456789abcdef"
URL = "https://cdn.test/a.png"
SUCCESS = json.dumps({"code": 0, "message": "ok", "data": {"url": URL}}).encode()

TRANSPORTS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "httpx": httpx.AsyncHTTPTransport,
    "fast": FastTransport,
}


def deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about a thousandth of the size)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join([*parts, packer.flush()])


# Content-Encoding -> the body sent with it.
ENCODED: dict[str, bytes] = {
    "gzip": gzip.compress(SUCCESS),
    "deflate": deflate(SUCCESS),
    "GZip": gzip.compress(SUCCESS),  # names are case-insensitive
    "deflate, gzip": gzip.compress(deflate(SUCCESS)),  # applied in order, undone in reverse
    "identity": SUCCESS,
    "x-unknown": SUCCESS,  # httpx passes an encoding it does not know through
}


def answer(encoding: str, body: bytes) -> Callable[[bytes], bytes]:
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-encoding: {encoding}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return lambda _request_head: head.encode() + body


async def outcome(base_url: str, transport: httpx.AsyncBaseTransport) -> tuple[str, object]:
    async with AsyncNanoBanana(KEY, base_url=base_url, transport=transport, max_retries=0) as c:
        try:
            generation = await c.generate("a banana")
        except APIConnectionError as exc:
            return (type(exc).__name__, exc.may_have_been_charged)
        except MalformedResponseError as exc:
            return (type(exc).__name__, exc.status_code)
        return ("ok", generation.urls)


@pytest.mark.parametrize("encoding", list(ENCODED))
async def test_a_compressed_success_is_a_success_on_every_path(
    anyio_backend: str, encoding: str
) -> None:
    async with loopback_server(answer(encoding, ENCODED[encoding])) as server:
        seen = {name: await outcome(server.base_url, make()) for name, make in TRANSPORTS.items()}
    assert seen == dict.fromkeys(TRANSPORTS, ("ok", (URL,)))


@unfinished_generators
@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"this is not gzip"),
        ("deflate", b"nor deflate"),
        ("deflate, gzip", gzip.compress(b"gzip around something that is not deflate")),
    ],
    ids=["gzip", "deflate", "stacked"],
)
async def test_a_body_that_does_not_decode_fails_as_httpx_says(
    anyio_backend: str, encoding: str, body: bytes
) -> None:
    # httpx raises DecodingError after the request was sent: the answer is lost, the server
    # may have charged. Every path says the same.
    async with loopback_server(answer(encoding, body)) as server:
        seen = {name: await outcome(server.base_url, make()) for name, make in TRANSPORTS.items()}
    assert seen == dict.fromkeys(TRANSPORTS, ("APIConnectionError", True))


@unfinished_generators
async def test_a_gzip_bomb_is_refused_on_every_path(anyio_backend: str) -> None:
    bomb = gzip_bomb(64 << 20)
    assert len(bomb) < MAX_RESPONSE_BYTES  # only its decoded size is over the cap
    async with loopback_server(answer("gzip", bomb)) as server:
        seen = {name: await outcome(server.base_url, make()) for name, make in TRANSPORTS.items()}
    assert seen == dict.fromkeys(TRANSPORTS, ("MalformedResponseError", 200))


async def test_a_bomb_is_decoded_in_bounded_memory(anyio_backend: str) -> None:
    # The SDK's own transport (its h11 pool's direct path) feeds httpx's decoders 1 KiB at a
    # time and holds a few times the cap at most (about 8 MiB here, the server included).
    # httpx's own transport peaks at about 140 MiB on this body: it decodes each 64 KiB read
    # in one call.
    bomb = gzip_bomb(256 << 20)
    async with loopback_server(answer("gzip", bomb)) as server:
        transport = FastTransport()
        tracemalloc.start()
        try:
            result = await outcome(server.base_url, transport)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result == ("MalformedResponseError", 200)
    assert peak < 16 * MAX_RESPONSE_BYTES
