"""A server that closes each connection after one answer, without ``Connection: close``
(issue 20, item 5): Go net/http's rule on every transport path, on asyncio and Trio.

The raw server (``tests/support/http_server.py``, :class:`ClosingServer`) answers one request
per connection, then closes or resets the connection under the next request without handling
it: the race a real server of this kind loses now and then, lost every time. A request that
met such a closed pooled connection before any byte of its answer, and carries an
``Idempotency-Key``, is sent once more on a new connection; the server counts that it never
handled the first copy. Anything else (a fresh connection closed under its request, part of an
answer, a request without a key) stays a failure, "may have been charged" for a generate call.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from nanobanana_async import APIConnectionError, AsyncNanoBanana
from nanobanana_async._http.fast import FastTransport
from tests.support.http_server import ClosingServer, serving

pytestmark = pytest.mark.anyio

KEY = "nb-resend-0123456789abcdef"
CALLS = 6

# How a client reaches the server: through its direct path (h11), through httpx's own
# transport (transport= and http_client=), or through FastTransport inside a caller's httpx
# client (the path that builds httpx requests: h11-handle).
PATHS: dict[str, Callable[[str], AsyncNanoBanana]] = {
    "h11": lambda url: AsyncNanoBanana(KEY, base_url=url, transport=FastTransport(), max_retries=0),
    "httpx-transport": lambda url: AsyncNanoBanana(
        KEY, base_url=url, transport=httpx.AsyncHTTPTransport(), max_retries=0
    ),
    "httpx-client": lambda url: AsyncNanoBanana(
        KEY, base_url=url, http_client=httpx.AsyncClient(), max_retries=0
    ),
    "h11-handle": lambda url: AsyncNanoBanana(
        KEY,
        base_url=url,
        http_client=httpx.AsyncClient(transport=FastTransport()),
        max_retries=0,
    ),
}


async def _close_client(client: AsyncNanoBanana) -> None:
    await client.aclose()
    http = client._user_client
    if http is not None:  # a caller's client: the caller closes it
        await http.aclose()


@pytest.mark.parametrize("mode", ["eof", "reset"])
@pytest.mark.parametrize("path", list(PATHS))
async def test_a_request_on_a_connection_closed_under_it_is_sent_once_more(
    anyio_backend: str, path: str, mode: str
) -> None:
    async with serving(ClosingServer(mode)) as server:
        client = PATHS[path](server.base_url)
        try:
            for i in range(CALLS):
                generation = await client.generate(f"one at a time {i}")
                assert generation.urls
        finally:
            await _close_client(client)
    # Every call after the first went out on the pooled connection, which the server closed
    # under it without handling it: each was sent again, on a new connection, and handled once.
    assert len(server.dropped) == CALLS - 1
    assert server.connections == CALLS
    assert len(server.answered) == CALLS
    assert len(set(server.answered)) == CALLS  # no request was handled twice
    assert set(server.dropped) <= set(server.answered)  # each dropped one came back, once


@pytest.mark.parametrize("path", list(PATHS))
async def test_a_fresh_connection_closed_under_its_request_stays_ambiguous(
    anyio_backend: str, path: str
) -> None:
    # A new connection has no reason to be closed under its request: the server may have
    # acted on it (crashed after charging), so it is not sent again.
    async with serving(ClosingServer("fresh")) as server:
        client = PATHS[path](server.base_url)
        try:
            with pytest.raises(APIConnectionError) as info:
                await client.generate("x")
        finally:
            await _close_client(client)
    assert info.value.may_have_been_charged
    assert server.connections == 1
    assert len(server.dropped) == 1


# httpx's own transport (httpcore) does not say whether part of a head arrived before the
# connection closed: there, a head cut short counts as no answer (_http/resend.py).
@pytest.mark.parametrize("path", [p for p in PATHS if not p.startswith("httpx")])
async def test_part_of_an_answer_on_a_reused_connection_stays_ambiguous(
    anyio_backend: str, path: str
) -> None:
    # The server started answering: it read the request, so it may have acted on it.
    async with serving(ClosingServer("partial")) as server:
        client = PATHS[path](server.base_url)
        try:
            await client.generate("first")
            with pytest.raises(APIConnectionError) as info:
                await client.generate("second")
        finally:
            await _close_client(client)
    assert info.value.may_have_been_charged
    assert server.connections == 1  # never sent again
    assert len(server.answered) == len(server.dropped) == 1


async def test_a_request_without_an_idempotency_key_is_not_sent_again(anyio_backend: str) -> None:
    # Outside the SDK's own generate requests: a POST through the transport that carries no
    # Idempotency-Key is not replayable, so its failure stands.
    transport = FastTransport()
    async with (
        serving(ClosingServer("eof")) as server,
        httpx.AsyncClient(transport=transport) as http,
    ):
        url = f"{server.base_url}/v1/images/generate"
        assert (await http.post(url, content=b"{}")).status_code == 200
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.post(url, content=b"{}")
        for key in ("k1", "k2"):  # the same race with a key (on k2): sent once more
            response = await http.post(url, content=b"{}", headers={"Idempotency-Key": key})
            assert response.status_code == 200
    assert server.connections == 3
    assert server.answered == ["", "k1", "k2"]
    assert server.dropped == ["", "k2"]
