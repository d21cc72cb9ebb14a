"""The h11 pool's asyncio connections: Happy Eyeballs over a host's addresses, and a connect
cancelled at any moment leaves no socket open.

A batch cancels connects all the time (``break``, a cancelled scope, a connect timeout). Each
connect below is cancelled after a different number of event-loop turns, from before the
socket exists to after the stream is made, so one of them lands in every step of the connect.
A socket lost on the way is closed only by the garbage collector, with a ``ResourceWarning``.
A host with several addresses is given here by replacing the resolver's answer.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import warnings

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute, SocketStream

from nanobanana_async._net import asyncio_stream
from nanobanana_async._net.asyncio_stream import connect
from tests.support.sockets import connections_to

# The module runs on asyncio only.
pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TURNS = 40


async def _hold(stream: SocketStream) -> None:
    async with stream:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            await stream.receive()


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def resolve_to(monkeypatch: pytest.MonkeyPatch, *ports: int) -> None:
    """Every host resolves to these loopback ports, tried in this order."""

    async def addresses(host: str, port: int) -> list[asyncio_stream.Address]:
        return [(socket.AF_INET, ("127.0.0.1", p)) for p in ports]

    monkeypatch.setattr(asyncio_stream, "_addresses", addresses)


async def test_a_refused_address_gives_way_to_the_next(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    resolve_to(monkeypatch, refused_port(), port)
    async with listener:
        stream = await connect("api.test", 0, None, None)
        assert stream.extra(SocketAttribute.raw_socket).getpeername()[1] == port
        await stream.aclose()


async def test_every_address_refused_is_one_oserror(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_to(monkeypatch, refused_port(), refused_port())
    with pytest.raises(OSError, match="Multiple exceptions") as info:
        await connect("api.test", 0, None, None)
    assert str(info.value).count("Connect call failed") == 2  # each attempt's own failure


@pytest.mark.parametrize("raced", [False, True], ids=["one-address", "raced-addresses"])
async def test_a_connect_cancelled_at_any_moment_leaves_no_socket_open(
    anyio_backend: str, raced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = 0

    async def connect_then_close(port: int) -> None:
        nonlocal made
        stream = await connect("127.0.0.1", port, None, None)
        made += 1
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    if raced:  # a refused address first, then one that answers (and one more, never reached)
        resolve_to(monkeypatch, refused_port(), port, port)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, _hold)
            for turns in range(TURNS):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(connect_then_close, port)
                    for _ in range(turns):
                        await anyio.lowlevel.checkpoint()
                    tg.cancel_scope.cancel()
            for _ in range(5):  # an aborted transport closes its socket on the loop's next turn
                await anyio.lowlevel.checkpoint()
            assert connections_to(port) == 0
            server.cancel_scope.cancel()
        gc.collect()
    assert 0 < made < TURNS  # some were cancelled before the stream was made, some after
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
