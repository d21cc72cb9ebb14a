"""H11Transport.post, the h11 pool's direct path, against h11's own path, answer by answer.

A loopback server answers each POST with canned bytes (or misbehaves on purpose). Every answer
is read once through ``post`` and once the way the SDK read it before the direct path existed:
an ``httpx.AsyncClient`` on the same pool (``handle_async_request``: h11 parses, httpx
decodes), the body read under the same cap. The two must agree on the status, the headers, the
body or the failure, and on which connections were reused; on asyncio and on Trio.
"""

from __future__ import annotations

import gzip
import zlib
from contextlib import AbstractAsyncContextManager

import anyio
import attrs
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from nanobanana_async._http.body import BodyTooLarge, declared_length, read_capped
from nanobanana_async._http.h11_pool import H11Transport
from nanobanana_async._http.wire import ResponseHeaders, parse_head, request_bytes
from tests.support.http_server import serving

pytestmark = pytest.mark.anyio

HEADERS = {
    "Authorization": "Bearer nb-h11-direct-0123456789abcdef",
    "Content-Type": "application/json",
    "Accept-Encoding": "identity",
}
TIMEOUT = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": None}
SUCCESS = b'{"code":0,"message":"ok","data":{"url":"https://cdn.test/a.png"}}'


def plain(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-length: %d\r\n" % (status, len(body))
    return head + b"".join(e + b"\r\n" for e in extra) + b"\r\n" + body


def chunked(*parts: bytes, extra: bytes = b"") -> bytes:
    chunks = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts)
    return (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
        + extra
        + b"\r\n"
        + chunks
        + b"0\r\n\r\n"
    )


@attrs.define
class Server:
    """Answers the n-th request (on any connection) with ``answers[n % len]``."""

    answers: list[bytes | str]
    port: int = 0
    accepted: int = 0
    closed: int = 0
    requests: list[bytes] = attrs.Factory(list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/images/generate"

    async def handle(self, stream: SocketStream) -> None:
        self.accepted += 1
        try:
            async with stream:
                await self._serve(stream)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.closed += 1

    async def _serve(self, stream: SocketStream) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += await stream.receive()
            body, buffer = buffer[:length], buffer[length:]
            self.requests.append(head + b"\r\n\r\n" + body)
            answer = self.answers[(len(self.requests) - 1) % len(self.answers)]
            if answer == "drop":
                return
            if answer == "hang":  # until the client goes away: its EOF ends the wait
                while True:
                    await stream.receive()
            if answer == "split":  # the head in two segments, a pause between
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-")
                await anyio.sleep(0.05)
                await stream.send(b"length: 2\r\n\r\nok")
                continue
            if answer == "truncated":
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                return
            assert isinstance(answer, bytes)
            await stream.send(answer)
            lowered = answer.lower()
            if answer.startswith(b"HTTP/1.0") or b"connection: close" in lowered:
                return
            framed = b"content-length" in lowered or b"chunked" in lowered
            if not framed and b" 204 " not in answer and b" 304 " not in answer:
                return  # a body delimited by the close


def server_for(*answers: bytes | str) -> AbstractAsyncContextManager[Server]:
    return serving(Server(list(answers)))


async def settle(server: Server, open_connections: int) -> None:
    """Wait (briefly) until the server has seen the client's closes."""
    for _ in range(200):
        if server.accepted - server.closed == open_connections:
            return
        await anyio.sleep(0.01)


Outcome = tuple[int, dict[str, str], bytes] | str


async def via_post(transport: H11Transport, url: str, limit: int) -> Outcome:
    try:
        status, headers, content = await transport.post(url, b'{"a":1}', HEADERS, TIMEOUT, limit)
    except (httpx.HTTPError, BodyTooLarge) as exc:
        return type(exc).__name__
    assert isinstance(headers, ResponseHeaders)
    return status, dict(headers), content


async def via_h11(client: httpx.AsyncClient, url: str, limit: int) -> Outcome:
    """The path generate requests took under Trio before the direct path (client.py)."""
    request = client.build_request("POST", url, content=b'{"a":1}', headers=HEADERS)
    try:
        response = await client.send(request, stream=True)
        try:
            content = await read_capped(
                response.aiter_bytes(),
                declared_length(response.headers.get("content-length")),
                limit,
                response.status_code,
                response.headers,
            )
        finally:
            await response.aclose()
    except (httpx.HTTPError, BodyTooLarge) as exc:
        return type(exc).__name__
    headers: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        headers[name] = value if name not in headers else f"{headers[name]}, {value}"
    return response.status_code, headers, content


ANSWERS: dict[str, tuple[bytes | str, ...]] = {
    "plain": (plain(SUCCESS),),
    "plain, empty reason": (b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok",),
    "plain, odd reason": (plain(b"ok", status=b"200 Fine\tindeed"),),
    "error status": (plain(b'{"code":500}', status=b"500 Internal Server Error"),),
    "429 with retry-after": (plain(b"slow", b"Retry-After: 3", status=b"429 Too Many"),),
    "repeated header": (plain(b"ok", b"x-a: 1", b"X-A: 2", b"retry-after: 3"),),
    "header with blanks": (plain(b"ok", b"x-a:   spaced  value \t", b"x-b:"),),
    "empty body": (plain(b""),),
    "gzip": (plain(gzip.compress(SUCCESS), b"Content-Encoding: gzip"),),
    "deflate, gzip": (
        plain(gzip.compress(zlib.compress(SUCCESS)), b"content-encoding: deflate, gzip"),
    ),
    "unknown encoding": (plain(SUCCESS, b"content-encoding: x-unknown"),),
    "gzip that does not decode": (plain(b"not gzip at all", b"content-encoding: gzip"),),
    "gzip over the cap": (plain(gzip.compress(bytes(9000)), b"content-encoding: gzip"),),
    "over the cap": (plain(b"x" * 5000),),
    "chunked": (chunked(b"ab", b"cde"),),
    "chunked, gzip": (chunked(gzip.compress(SUCCESS), extra=b"content-encoding: gzip\r\n"),),
    "chunked over the cap": (chunked(b"x" * 3000, b"y" * 3000),),
    "bare LF": (b"HTTP/1.1 200 OK\ncontent-length: 5\n\nhello",),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n",),
    "304": (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n",),
    "100 then 200": (b"HTTP/1.1 100 Continue\r\n\r\n" + plain(b"after"),),
    "HTTP/1.0": (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",),
    "connection close": (plain(b"bye", b"Connection: keep-alive, Close"),),
    "read to close": (b"HTTP/1.1 200 OK\r\n\r\nuntil the end",),
    "garbage": (b"this is not HTTP\r\n\r\n",),
    "bad header line": (b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok",),
    "folded header": (b"HTTP/1.1 200 OK\r\nx-a: one\r\n two\r\ncontent-length: 2\r\n\r\nok",),
    "two content-lengths": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    ),
    "conflicting content-lengths": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
    ),
    "bad content-length": (b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok",),
    "stray CRLF after the body": (plain(SUCCESS) + b"\r\n",),
    "a second answer after the body": (plain(b"ok") + plain(b"unasked"),),
    "drop": ("drop",),
    "truncated body": ("truncated",),
    "head in two segments": ("split",),
    "oversized head": (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 20000,),
    "plain, then chunked": (plain(b"one"), chunked(b"two")),
}


# httpx leaves its nested body generators unfinished when a read stops early (over the cap, a
# body that does not decode) and Trio warns when they are collected: the reference path's own
# wart, ignored for httpx's generators only (the direct path has none).
@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
@pytest.mark.parametrize("name", list(ANSWERS))
async def test_post_reads_every_answer_as_h11_does(anyio_backend: str, name: str) -> None:
    limit = 4096
    async with server_for(*ANSWERS[name]) as server:
        direct = H11Transport()
        got = [await via_post(direct, server.url, limit) for _ in range(4)]
        await settle(server, direct.idle_connections)
        reference = H11Transport()
        async with httpx.AsyncClient(
            transport=reference, timeout=httpx.Timeout(5.0, pool=None)
        ) as client:
            expected = [await via_h11(client, server.url, limit) for _ in range(4)]
            assert got == expected, name
            # The same connections opened and kept as on h11's path.
            assert direct.connections_opened == reference.connections_opened, name
            assert direct.idle_connections == reference.idle_connections, name
        await direct.aclose()
        await settle(server, 0)
        assert server.accepted == server.closed


async def test_the_request_on_the_wire(anyio_backend: str) -> None:
    async with server_for(plain(b"ok")) as server:
        transport = H11Transport()
        assert (await transport.post(server.url, b'{"a":1}', HEADERS, TIMEOUT, 100))[2] == b"ok"
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/images/generate HTTP/1.1"
        assert lines[1] == f"Host: 127.0.0.1:{server.port}".encode()
        assert b"Authorization: Bearer nb-h11-direct-0123456789abcdef" in lines
        assert b"Accept-Encoding: identity" in lines
        assert lines[-1] == b"Content-Length: 7"
        assert body == b'{"a":1}'
        await transport.aclose()


def test_the_request_bytes_are_what_h11_would_send() -> None:
    import h11

    headers = {**HEADERS, "Idempotency-Key": "0123abcd", "X-Tab": "a\tb"}
    mine = request_bytes(b"/v1/x?q=1", b"api.test:8443", headers, b"{}")
    conn = h11.Connection(h11.CLIENT)
    raw = [(b"Host", b"api.test:8443")]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"Content-Length", b"2"))
    theirs = conn.send(h11.Request(method=b"POST", target=b"/v1/x?q=1", headers=raw))
    assert theirs is not None
    theirs += conn.send(h11.Data(data=b"{}")) or b""
    # h11 writes the names as given, the values as given: the same bytes.
    assert mine == theirs


@pytest.mark.parametrize(
    "value",
    ["line\r\nbreak", "trailing ", " leading", "nul\x00", "tab\t"],
)
def test_header_values_h11_refuses_are_refused_without_quoting_them(value: str) -> None:
    import h11

    from nanobanana_async._http.wire import IllegalHeader

    with pytest.raises(h11.LocalProtocolError):
        h11.Connection(h11.CLIENT).send(
            h11.Request(method="POST", target="/", headers=[("Host", "x"), ("X-Key", value)])
        )
    with pytest.raises(IllegalHeader) as caught:
        request_bytes(b"/", b"x", {"X-Key": value}, b"")
    assert value.strip() not in str(caught.value)


async def test_an_illegal_key_is_a_local_protocol_error_that_does_not_quote_it(
    anyio_backend: str,
) -> None:
    headers = {**HEADERS, "Authorization": "Bearer secret\nInjected: 1"}
    with pytest.raises(httpx.LocalProtocolError) as caught:
        await H11Transport().post("http://127.0.0.1:9/x", b"{}", headers, TIMEOUT, 100)
    assert "secret" not in str(caught.value)


def test_parse_head_leaves_the_unusual_to_h11() -> None:
    head = parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: b")
    assert head is not None
    assert (head.status, head.length, head.keep_alive, head.encoded) == (201, 3, True, False)
    assert head.headers["x-a"] == head.headers["X-A"] == "b"
    assert "X-A" in head.headers
    assert head.headers.get("Content-Length") == "3"
    for unusual in (
        b"HTTP/1.1 200 OK",  # no length: read to the close
        b"HTTP/1.1 101 Switching",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
        b"HTTP/2 200\r\ncontent-length: 1",
        b"HTTP/1.1 200 OK\r\ncontent-length: 123456789012345678901",
    ):
        assert parse_head(unusual) is None, unusual


async def test_a_silent_server_is_a_read_timeout_and_the_connection_closed(
    anyio_backend: str,
) -> None:
    async with server_for("hang") as server:
        transport = H11Transport()
        with pytest.raises(httpx.ReadTimeout):
            await transport.post(server.url, b"{}", HEADERS, {**TIMEOUT, "read": 0.2}, 100)
        assert transport.idle_connections == 0
        await settle(server, 0)
        assert server.accepted == server.closed == 1


async def test_cancelling_a_post_leaves_no_connection_open(anyio_backend: str) -> None:
    async with server_for("hang") as server:
        transport = H11Transport()
        with anyio.move_on_after(0.2) as scope:
            await transport.post(server.url, b"{}", HEADERS, TIMEOUT, 100)
        assert scope.cancelled_caught
        assert transport.idle_connections == 0
        await settle(server, 0)
        assert server.accepted == server.closed == 1


async def test_nothing_listening_is_a_connect_error(anyio_backend: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    with pytest.raises(httpx.ConnectError):
        await H11Transport().post(f"http://127.0.0.1:{port}/x", b"{}", HEADERS, TIMEOUT, 100)


async def test_an_unsupported_scheme_is_refused(anyio_backend: str) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await H11Transport().post("ftp://127.0.0.1/x", b"{}", HEADERS, TIMEOUT, 100)


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    anyio_backend: str,
) -> None:
    # The server closes after each answer without saying so: the readable socket tells.
    async def close_after(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(plain(b"ok"))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, close_after)
        transport = H11Transport()
        for _ in range(3):
            url = f"http://127.0.0.1:{port}/x"
            assert (await transport.post(url, b"{}", HEADERS, TIMEOUT, 100))[2] == b"ok"
            await anyio.sleep(0.05)
        assert transport.connections_opened == 3
        await transport.aclose()
        tg.cancel_scope.cancel()


async def test_a_connection_after_aclose_is_closed_not_pooled(anyio_backend: str) -> None:
    async with server_for(plain(b"ok")) as server:
        transport = H11Transport()
        await transport.aclose()
        assert (await transport.post(server.url, b"{}", HEADERS, TIMEOUT, 100))[2] == b"ok"
        assert transport.idle_connections == 0
        await settle(server, 0)
