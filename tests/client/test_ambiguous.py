"""Ambiguous failures: the request reached the server, and then the answer was lost.

A read timeout or a connection dropped after the request was sent may come after the server
generated and charged. Such failures are not retried by default and say "may have been
charged"; ``retry_ambiguous=True`` retries them with the same ``Idempotency-Key``, which a
server that honours it (the emulator does) uses to charge once.

The socket tests run a raw HTTP/1.1 server on loopback, so the drops and stalls are real TCP
behaviour, not mocked exceptions.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import anyio
import attrs
import httpx
import pytest
from anyio.abc import SocketStream

from nanobanana_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncNanoBanana,
    Job,
    MalformedResponseError,
    RetryPolicy,
)
from tests.support.http_server import serving

pytestmark = pytest.mark.anyio

KEY = "nb-ambig-0123456789abcdefKLMN"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
SHORT_READ = httpx.Timeout(connect=5.0, read=0.3, write=5.0, pool=None)

Behaviour = Literal["ok", "drop", "hang", "500", "garbage"]


@attrs.define
class RawServer:
    """A loopback HTTP/1.1 server that answers each request as ``script`` says."""

    script: list[Behaviour]
    requests: list[dict[str, str]] = attrs.Factory(list)
    bodies: list[dict[str, Any]] = attrs.Factory(list)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def behaviour(self) -> Behaviour:
        n = len(self.requests) - 1
        return self.script[min(n, len(self.script) - 1)]

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            while True:
                buffer = b""
                try:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                head, _, rest = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:])
                }
                length = int(headers.get("content-length", "0"))
                while len(rest) < length:
                    rest += await stream.receive()
                self.requests.append(headers)
                self.bodies.append(json.loads(rest) if rest else {})
                behaviour = self.behaviour()
                if behaviour == "drop":
                    return  # closes the socket: the request was read, no answer
                if behaviour == "hang":
                    await anyio.sleep_forever()
                if behaviour == "ok":
                    n = self.bodies[-1].get("num", 1)
                    url: Any = (
                        "https://cdn.test/a.png" if n == 1 else ["https://cdn.test/a.png"] * n
                    )
                    payload = json.dumps({"code": 0, "message": "ok", "data": {"url": url}})
                    status = "200 OK"
                elif behaviour == "500":
                    payload, status = '{"code":500,"message":"server error"}', "500 Oops"
                else:
                    payload, status = "<html>not json</html>", "200 OK"
                data = payload.encode()
                await stream.send(
                    f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )


def raw_server(*script: Behaviour) -> AbstractAsyncContextManager[RawServer]:
    return serving(RawServer(list(script)))


def client(base_url: str, **kwargs: Any) -> AsyncNanoBanana:
    kwargs.setdefault("retry_policy", FAST)
    kwargs.setdefault("timeout", SHORT_READ)
    return AsyncNanoBanana(KEY, base_url=base_url, **kwargs)


def assert_says_maybe_charged(exc: APIConnectionError) -> None:
    assert exc.may_have_been_charged
    text = str(exc)
    assert "may have" in text
    assert "charged" in text
    assert "retry_ambiguous" in text
    assert KEY not in text


# -- not retried by default --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "error"), [("drop", APIConnectionError), ("hang", APITimeoutError)]
)
async def test_an_ambiguous_failure_is_not_retried_and_says_so(
    anyio_backend: str, behaviour: Behaviour, error: type[APIConnectionError]
) -> None:
    async with raw_server(behaviour, "ok") as server, client(server.base_url) as c:
        with pytest.raises(error) as info:
            await c.generate("a lighthouse")
    assert_says_maybe_charged(info.value)
    assert len(server.requests) == 1


async def test_a_malformed_success_is_not_retried(anyio_backend: str) -> None:
    async with raw_server("garbage", "ok") as server, client(server.base_url) as c:
        with pytest.raises(MalformedResponseError):
            await c.generate("a lighthouse")
    assert len(server.requests) == 1


async def test_a_server_error_is_retried_with_the_same_key(anyio_backend: str) -> None:
    async with raw_server("500", "500", "ok") as server, client(server.base_url) as c:
        await c.generate("a lighthouse")
    keys = [r["idempotency-key"] for r in server.requests]
    assert len(keys) == 3
    assert len(set(keys)) == 1


async def test_a_request_that_never_left_is_retried_with_the_same_key(anyio_backend: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": "u"}})

    async with AsyncNanoBanana(
        KEY, base_url="https://api.test", transport=httpx.MockTransport(handler), retry_policy=FAST
    ) as c:
        await c.generate("x")
    assert len({r.headers["idempotency-key"] for r in seen}) == 1
    assert len(seen) == 3


async def test_nothing_listening_is_not_ambiguous(anyio_backend: str) -> None:
    # A port nobody listens on: the connect fails, nothing was sent, nothing charged.
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    async with client(f"http://127.0.0.1:{port}", max_retries=1) as c:
        with pytest.raises(APIConnectionError) as info:
            await c.generate("x")
    assert not info.value.may_have_been_charged
    assert "charged" not in str(info.value)


# -- opting in ----------------------------------------------------------------------------------

OptIn = Callable[[str], Any]


@pytest.mark.parametrize("behaviour", ["drop", "hang"])
@pytest.mark.parametrize("where", ["client", "call", "policy"])
async def test_opting_in_retries_with_the_same_idempotency_key(
    anyio_backend: str, behaviour: Behaviour, where: str
) -> None:
    async with raw_server(behaviour, behaviour, "ok") as server:
        options: dict[str, Any] = {}
        if where == "client":
            options["retry_ambiguous"] = True
        elif where == "policy":
            options["retry_policy"] = RetryPolicy(
                initial_delay=0.001, max_delay=0.01, retry_ambiguous=True
            )
        async with client(server.base_url, **options) as c:
            generation = await c.generate(
                "a lighthouse", retry_ambiguous=True if where == "call" else None
            )
    assert generation.urls == ("https://cdn.test/a.png",)
    keys = [r["idempotency-key"] for r in server.requests]
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert all(body == server.bodies[0] for body in server.bodies)


async def test_a_lost_answer_retried_to_the_end_does_not_say_it_was_not_retried(
    anyio_backend: str,
) -> None:
    # With retry_ambiguous=True the last lost answer was retried (max_retries ran out): its
    # error must not say "so it was not retried. Pass retry_ambiguous=True".
    async with (
        raw_server("drop") as server,
        client(server.base_url, retry_ambiguous=True, max_retries=2) as c,
    ):
        with pytest.raises(APIConnectionError) as info:
            await c.generate("x")
    assert len(server.requests) == 3
    text = str(info.value)
    assert info.value.may_have_been_charged
    assert "may have generated and charged" in text
    assert "not retried" not in text
    assert "Pass retry_ambiguous=True" not in text
    assert "retry_ambiguous=True retries such failures" in text
    assert "attempt 3 of at most 3" in text
    assert "\n" not in text


async def test_a_call_can_opt_out_of_a_client_that_opted_in(anyio_backend: str) -> None:
    async with (
        raw_server("drop", "ok") as server,
        client(server.base_url, retry_ambiguous=True) as c,
    ):
        with pytest.raises(APIConnectionError) as info:
            await c.generate("x", retry_ambiguous=False)
    assert_says_maybe_charged(info.value)
    assert len(server.requests) == 1


async def test_every_logical_call_has_its_own_key(anyio_backend: str) -> None:
    async with raw_server("ok") as server, client(server.base_url) as c:
        for _ in range(3):
            await c.generate("same prompt")
    assert len({r["idempotency-key"] for r in server.requests}) == 3


# -- in a batch ---------------------------------------------------------------------------------


async def test_a_batch_reports_ambiguous_jobs_and_keeps_their_budget(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    # Job 0's answer is lost: it may have cost 2 credits, so with max_credits=4 only one more
    # 2-credit job may run, and the third is skipped rather than risk going over budget.
    async with raw_server("drop", "ok") as server, client(server.base_url) as c:
        report = await c.run_batch(
            [Job(f"p{i}", id=f"j{i}") for i in range(3)],
            concurrency=1,
            max_credits=4,
            journal=tmp_path / "journal.jsonl",
        )
    first, second, third = report.results
    assert first.status == "failed"
    assert isinstance(first.error, APIConnectionError)
    assert_says_maybe_charged(first.error)
    assert first.credits == 0
    assert first.attempts == 1
    assert second.ok
    assert third.status == "skipped"
    assert third.reason is not None
    assert "over budget" in third.reason
    assert len(server.requests) == 2
    lines = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    ambiguous = next(line for line in lines if line["id"] == "j0")
    assert "may have" in ambiguous["error"]


async def test_a_batch_can_opt_in(anyio_backend: str) -> None:
    async with raw_server("drop", "hang", "ok") as server, client(server.base_url) as c:
        report = await c.run_batch(["p"], retry_ambiguous=True)
    assert report.ok
    assert report.results[0].attempts == 3
    assert report.retries == 2
    assert len({r["idempotency-key"] for r in server.requests}) == 1


# -- against the emulator: who pays ------------------------------------------------------------


def drop_once_emulator(*, honour_idempotency: bool) -> Any:
    """An emulator whose first generation is charged and then its connection dropped."""
    from nanobanana_async.emulator import Emulator, Faults

    class DropOnce(Emulator):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                if self.stats.faults["dropped_after_charge"]:
                    self.faults = Faults()

    return DropOnce(
        faults=Faults(drop_rate=1.0, drop_after_charge_share=1.0),
        honour_idempotency=honour_idempotency,
        seed=1,
    )


@asynccontextmanager
async def emulated(emulator: Any) -> AsyncIterator[str]:
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import serve

    with serve(emulator, "127.0.0.1", 0) as running:
        yield str(running.base_url)


async def test_by_default_a_charged_drop_is_reported_not_repaid(anyio_backend: str) -> None:
    emulator = drop_once_emulator(honour_idempotency=True)
    async with emulated(emulator) as url, client(url) as c:
        with pytest.raises(APIConnectionError) as info:
            await c.generate("paid for, never seen")
    assert_says_maybe_charged(info.value)
    stats = emulator.stats
    assert stats.generate_requests == 1
    assert stats.faults["dropped_after_charge"] == 1
    assert stats.credits_charged == 2  # the documented ambiguous case: charged, not delivered


async def test_opting_in_pays_once_where_the_key_is_honoured(anyio_backend: str) -> None:
    emulator = drop_once_emulator(honour_idempotency=True)
    async with emulated(emulator) as url, client(url, retry_ambiguous=True) as c:
        generation = await c.generate("paid once")
    stats = emulator.stats
    assert generation.credits == 2
    assert stats.generate_requests == 2
    assert stats.idempotent_replays == 1
    assert stats.credits_charged == 2
    assert stats.duplicate_charges == 0
    assert list(stats.charged_idempotency_keys.values()) == [1]


async def test_opting_in_pays_twice_where_the_key_is_ignored(anyio_backend: str) -> None:
    # Why it is opt-in: the real API promises nothing about Idempotency-Key.
    emulator = drop_once_emulator(honour_idempotency=False)
    async with emulated(emulator) as url, client(url, retry_ambiguous=True) as c:
        await c.generate("paid twice")
    stats = emulator.stats
    assert stats.credits_charged == 4
    assert stats.duplicate_charges == 1
    assert list(stats.charged_idempotency_keys.values()) == [2]
