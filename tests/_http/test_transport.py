"""FastTransport, the client's default transport, behaves like httpx's own transport.

Each scenario runs over a real loopback socket with two transports: httpx's
``AsyncHTTPTransport`` (the reference) and ``FastTransport()`` (the SDK's h11 pool, on a native
asyncio stream under asyncio, on anyio's streams under Trio). The client must see the same
result or the same error, with the same "may have been charged" verdict, whichever transport
carried the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal

import anyio
import anyio.abc
import attrs
import httpx
import pytest
import respx
from anyio.abc import SocketStream

from nanobanana_async import (
    APIConnectionError,
    AsyncNanoBanana,
    MalformedResponseError,
    RetryPolicy,
    ServerError,
    __version__,
)
from nanobanana_async._http.fast import FastTransport
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.http_server import serving
from tests.support.sockets import connections_to
from tests.support.unfinished import unfinished_generators

pytestmark = pytest.mark.anyio

KEY = "nb-transport-0123456789abcdef"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
SHORT_READ = httpx.Timeout(connect=5.0, read=0.3, write=5.0, pool=None)
UNBOUNDED = httpx.Limits(max_connections=None, max_keepalive_connections=None)

TRANSPORTS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "httpx": lambda: httpx.AsyncHTTPTransport(limits=UNBOUNDED),
    "fast": FastTransport,
}

Behaviour = Literal["ok", "drop", "hang", "500", "huge", "huge-unsized"]


@attrs.define
class Server:
    """A loopback HTTP/1.1 server answering every request as ``behaviour`` says."""

    behaviour: Behaviour
    port: int = 0
    requests: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            while True:
                buffer = b""
                try:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.decode("latin-1").split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    while len(rest) < length:
                        rest += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                self.requests += 1
                if self.behaviour == "drop":
                    return
                if self.behaviour == "hang":
                    await anyio.sleep_forever()
                await self.answer(stream)

    async def answer(self, stream: SocketStream) -> None:
        if self.behaviour == "ok":
            data = json.dumps(
                {"code": 0, "message": "ok", "data": {"url": "https://cdn.test/a.png"}}
            ).encode()
            status = "200 OK"
        elif self.behaviour == "500":
            data, status = b'{"code":500,"message":"server error"}', "500 Oops"
        else:
            data, status = b'{"code":0,"pad":"' + b"x" * (2 << 20) + b'"}', "200 OK"
        if self.behaviour == "huge-unsized":
            # Chunked, so the size is only known by reading: the cap must stop the read.
            head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            await stream.send(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
            try:
                for i in range(0, len(data), 64 << 10):
                    piece = data[i : i + (64 << 10)]
                    await stream.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await stream.send(b"0\r\n\r\n")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            return
        try:
            await stream.send(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\n\r\n".encode()
                + data
            )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


def raw_server(behaviour: Behaviour) -> AbstractAsyncContextManager[Server]:
    return serving(Server(behaviour))


Outcome = tuple[str, object]


async def outcome(base_url: str, transport: httpx.AsyncBaseTransport) -> Outcome:
    async with AsyncNanoBanana(
        KEY,
        base_url=base_url,
        transport=transport,
        retry_policy=FAST,
        timeout=SHORT_READ,
        max_retries=0,
    ) as client:
        try:
            generation = await client.generate("a banana")
        except APIConnectionError as exc:
            return (type(exc).__name__, exc.may_have_been_charged)
        except (ServerError, MalformedResponseError) as exc:
            return (type(exc).__name__, exc.status_code)
        return ("ok", tuple(httpx.URL(url).path for url in generation.urls))


EXPECTED: dict[Behaviour, Outcome] = {
    "ok": ("ok", ("/a.png",)),
    "500": ("ServerError", 500),
    "drop": ("APIConnectionError", True),
    "hang": ("APITimeoutError", True),
    "huge": ("MalformedResponseError", 200),
    "huge-unsized": ("MalformedResponseError", 200),
}


@unfinished_generators
@pytest.mark.parametrize("behaviour", list(EXPECTED))
async def test_every_transport_gives_the_same_result(
    anyio_backend: str, behaviour: Behaviour
) -> None:
    seen: dict[str, Outcome] = {}
    async with raw_server(behaviour) as server:
        for name, make in TRANSPORTS.items():
            seen[name] = await outcome(server.base_url, make())
    assert seen == dict.fromkeys(TRANSPORTS, EXPECTED[behaviour])
    assert server.requests == len(TRANSPORTS)


async def test_nothing_listening_is_not_ambiguous(anyio_backend: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    seen = {
        name: await outcome(f"http://127.0.0.1:{port}", make()) for name, make in TRANSPORTS.items()
    }
    assert seen == dict.fromkeys(TRANSPORTS, ("APIConnectionError", False))


async def test_the_emulator_over_loopback_gives_the_same_answers(anyio_backend: str) -> None:
    # Every fault of the emulator at once, seeded: the same sequence of outcomes per transport.
    faults = Faults(server_error_rate=0.2, drop_rate=0.2, drop_after_charge_share=0.5)
    results: dict[str, list[Outcome]] = {}
    for name, make in TRANSPORTS.items():
        with serve(Emulator(faults=faults, seed=7), "127.0.0.1", 0) as running:
            transport = make()
            results[name] = [await outcome(str(running.base_url), transport) for _ in range(20)]
    kinds = {o[0] for o in results["httpx"]}
    assert {"ok", "ServerError", "APIConnectionError"} <= kinds
    assert results["fast"] == results["httpx"]


async def test_a_client_without_transport_uses_the_fast_transport(anyio_backend: str) -> None:
    async with raw_server("ok") as server:
        client = AsyncNanoBanana(KEY, base_url=server.base_url, max_retries=0)
        http = client._http()
        assert isinstance(http._transport, FastTransport)
        assert (await client.generate("x")).urls == ("https://cdn.test/a.png",)
        await client.aclose()


async def test_respx_still_mocks_the_default_transport(anyio_backend: str) -> None:
    url = "https://api.test/v1/images/generate"
    body = {"code": 0, "message": "ok", "data": {"url": "https://i/1.png"}}
    async with respx.mock(assert_all_called=True) as mock:
        route = mock.post(url).mock(return_value=httpx.Response(200, json=body))
        async with AsyncNanoBanana(KEY, base_url="https://api.test", retry_policy=FAST) as client:
            assert (await client.generate("x")).urls == ("https://i/1.png",)
    assert route.call_count == 1


@pytest.mark.parametrize("name", list(TRANSPORTS))
async def test_a_batch_opens_connections_and_aclose_closes_them_all(
    anyio_backend: str, name: str
) -> None:
    emulator = Emulator(faults=Faults(latency=0.05), seed=3)
    with serve(emulator, "127.0.0.1", 0) as running:
        port = httpx.URL(str(running.base_url)).port
        assert port is not None
        client = AsyncNanoBanana(
            KEY, base_url=str(running.base_url), transport=TRANSPORTS[name](), retry_policy=FAST
        )
        report = await client.run_batch([f"p{i}" for i in range(96)], concurrency=32)
        assert report.succeeded == 96
        open_before = connections_to(port)
        assert open_before >= 8  # the batch really ran concurrently over several connections
        await client.aclose()
        for _ in range(50):
            if connections_to(port) == 0:
                break
            await anyio.sleep(0.02)
        assert connections_to(port) == 0


@pytest.mark.parametrize("using", ["httpcore", "httpx"])
async def test_respx_mocks_the_default_transport_with_either_mocker(
    anyio_backend: str, using: str
) -> None:
    # respx(using="httpx") and pytest-httpx patch httpx's transport, not httpcore's pool: the
    # fast paths must step aside for them too, or a test suite would reach the real API.
    url = "https://api.test/v1/images/generate"
    body = {"code": 0, "message": "ok", "data": {"url": "https://i/1.png"}}
    async with respx.mock(using=using, assert_all_called=True) as mock:
        route = mock.post(url).mock(return_value=httpx.Response(200, json=body))
        async with AsyncNanoBanana(KEY, base_url="https://api.test", retry_policy=FAST) as client:
            assert (await client.generate("x")).urls == ("https://i/1.png",)
    assert route.call_count == 1


async def test_the_default_client_says_who_it_is_and_asks_for_no_compression_it_cannot_read(
    anyio_backend: str,
) -> None:
    heads: list[bytes] = []
    payload = b'{"code":0,"message":"ok","data":{"url":"https://i/1.png"}}'

    async def handle(stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            heads.append(data.partition(b"\r\n\r\n")[0].lower())
            await stream.send(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with AsyncNanoBanana(KEY, base_url=f"http://127.0.0.1:{port}") as client:
            await client.generate("x")
        tg.cancel_scope.cancel()
    [head] = heads
    assert f"user-agent: nanobanana-async/{__version__}".encode() in head
    # No compression, or one the path decodes: never a body it cannot read.
    assert b"accept-encoding: identity" in head or b"accept-encoding: gzip" in head
    assert b"content-type: application/json" in head
