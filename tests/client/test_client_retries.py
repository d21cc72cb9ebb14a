"""Retries through the client: what is retried, how often, Retry-After, budget, cancellation.

Each test plugs a respx router into the client as its transport (``httpx.MockTransport``), so
every request the client makes is recorded and nothing touches the network; a few use
``respx.mock`` to patch the client's default transport instead.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import respx

from nanobanana_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncNanoBanana,
    InvalidRequestError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from tests.client.mocked import (
    GENERATE,
    KEY,
    client_for,
    client_with,
    ok,
    seq,
    server_error,
)

pytestmark = pytest.mark.anyio


# -- retries ---------------------------------------------------------------------------------


async def test_a_huge_error_page_is_still_a_retried_server_error(router: respx.MockRouter) -> None:
    page = b"<html>" + b"x" * (2 << 20) + b"</html>"
    route = router.post(GENERATE).mock(
        side_effect=seq(httpx.Response(502, content=page), ok("https://i/1.png"))
    )
    async with client_for(router) as client:
        generation = await client.generate("x")
    assert generation.urls == ("https://i/1.png",)
    assert route.call_count == 2


@pytest.mark.parametrize("max_retries", [-1, 1.5, True])
def test_a_bad_max_retries_is_an_invalid_request(max_retries: Any) -> None:
    with pytest.raises(InvalidRequestError, match="max_retries"):
        AsyncNanoBanana(KEY, max_retries=max_retries)


async def test_a_bad_per_call_max_retries_sends_nothing(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router) as client:
        with pytest.raises(InvalidRequestError, match="max_retries"):
            await client.generate("x", max_retries=-2)
    assert route.call_count == 0


async def test_a_number_timeout_never_times_out_waiting_for_the_pool(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(return_value=ok("https://i/1.png"))
    async with client_for(router, timeout=5.0) as client:
        await client.generate("x")
    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": None}


async def test_server_errors_are_retried_max_retries_times_by_default(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router) as client:
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == 3


@pytest.mark.parametrize("max_retries", [0, 1, 4])
async def test_client_level_max_retries(router: respx.MockRouter, max_retries: int) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router, max_retries=max_retries) as client:
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == max_retries + 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_per_call_max_retries(router: respx.MockRouter, max_retries: int) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router, max_retries=5) as client:
        with pytest.raises(ServerError):
            await client.generate("x", max_retries=max_retries)
        assert route.call_count == max_retries + 1
        # The override is for that call only.
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == max_retries + 1 + 6


async def test_retry_policy_max_retries_is_used(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    policy = RetryPolicy(max_retries=1, initial_delay=0.001, max_delay=0.01)
    async with client_for(router, retry_policy=policy) as client:
        assert client.retry_policy.max_retries == 1
        with pytest.raises(ServerError):
            await client.generate("x")
    assert route.call_count == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"code": 500, "message": "server error"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(503, content=b""),
        httpx.Response(200, json={"code": 500, "message": "server error"}),
        httpx.Response(408, content=b""),
        httpx.Response(429, json={"code": 429, "message": "slow down"}),
    ],
    ids=["500", "502 html", "503 empty", "200 code 500", "408", "429 no retry-after"],
)
async def test_transient_failure_then_success(
    router: respx.MockRouter, failure: httpx.Response
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(failure, failure, ok("https://i/1")))
    async with client_for(router) as client:
        generation = await client.generate("x")
    assert generation.urls == ("https://i/1",)
    assert route.call_count == 3


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(400, json={"code": 400, "message": "invalid parameters"}),
        httpx.Response(200, json={"code": 400, "message": "invalid parameters"}),
        httpx.Response(401, json={"code": 401, "message": "invalid API key"}),
        httpx.Response(200, json={"code": 401, "message": "invalid API key"}),
        httpx.Response(200, json={"code": 400, "message": "insufficient credits"}),
        httpx.Response(400, json={"code": 400, "message": "Insufficient Credits"}),
        httpx.Response(200, json={"code": 0, "message": "ok", "data": {}}),
    ],
)
async def test_client_errors_are_never_retried(
    router: respx.MockRouter, failure: httpx.Response
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(failure, ok("https://i/1")))
    async with client_for(router, max_retries=5) as client:
        with pytest.raises(APIError):
            await client.generate("x")
    assert route.call_count == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "0.4"},
        {"retry-after-ms": "400"},
        {"Retry-After": "9", "retry-after-ms": "400"},
    ],
)
async def test_429_honours_retry_after(router: respx.MockRouter, headers: dict[str, str]) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(
            httpx.Response(429, headers=headers, json={"code": 429, "message": "slow"}),
            ok("https://i/1"),
        )
    )
    async with client_for(router) as client:
        start = anyio.current_time()
        await client.generate("x")
        elapsed = anyio.current_time() - start
    assert route.call_count == 2
    # The backoff alone is about a millisecond: the wait is the server's.
    assert 0.39 <= elapsed < 3.0


async def test_429_honours_an_integer_retry_after(router: respx.MockRouter) -> None:
    times: list[float] = []

    def respond(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"}, content=b"")
        return ok("https://i/1")

    router.post(GENERATE).mock(side_effect=respond)
    async with client_for(router) as client:
        await client.generate("x")
    assert len(times) == 2
    assert 0.99 <= times[1] - times[0] < 3.0


async def test_429_pauses_every_call_of_the_client(router: respx.MockRouter) -> None:
    times: list[float] = []
    limited = anyio.Event()

    def respond(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        if len(times) == 1:
            limited.set()
            return httpx.Response(429, headers={"retry-after-ms": "500"}, content=b"")
        return ok("https://i/1")

    router.post(GENERATE).mock(side_effect=respond)
    async with client_for(router) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.generate, "first")
        await limited.wait()
        await anyio.sleep(0.05)
        # A second call, started after the 429: it waits out the same pause.
        tg.start_soon(client.generate, "second")
    assert len(times) == 3
    assert all(t - times[0] >= 0.49 for t in times[1:]), [t - times[0] for t in times]


async def test_retry_after_beyond_the_cap_fails_at_once(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(
            httpx.Response(429, headers={"Retry-After": "3600"}, content=b""),
            ok("https://i/1"),
        )
    )
    policy = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_retry_after=30.0)
    async with client_for(router, retry_policy=policy) as client:
        start = anyio.current_time()
        with pytest.raises(RateLimitError) as info:
            await client.generate("x")
        assert anyio.current_time() - start < 1.0
        assert route.call_count == 1
        # Nor does it freeze the other calls of the client.
        start = anyio.current_time()
        await client.generate("y")
        assert anyio.current_time() - start < 1.0
    assert info.value.retry_after == 3600.0
    assert info.value.status_code == 429


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no connection available"),
    ],
)
async def test_failures_before_sending_are_retried(
    router: respx.MockRouter, error: httpx.HTTPError
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(error, error, ok("https://i/1")))
    async with client_for(router) as client:
        generation = await client.generate("x")
    assert generation.urls == ("https://i/1",)
    assert route.call_count == 3


async def test_connect_errors_exhaust_the_retries(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(side_effect=httpx.ConnectError("connection refused"))
    async with client_for(router, max_retries=3) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate("x")
    assert route.call_count == 4
    assert info.value.may_have_been_charged is False
    assert not isinstance(info.value, APITimeoutError)
    assert "connection refused" in str(info.value)


AMBIGUOUS: list[tuple[httpx.HTTPError, type[APIConnectionError]]] = [
    (httpx.ReadTimeout("read timed out"), APITimeoutError),
    (
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        APIConnectionError,
    ),
    (httpx.ReadError("connection reset by peer"), APIConnectionError),
]


@pytest.mark.parametrize(("error", "cls"), AMBIGUOUS)
async def test_failures_after_sending_are_not_retried_by_default(
    router: respx.MockRouter, error: httpx.HTTPError, cls: type[APIConnectionError]
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(error, ok("https://i/1")))
    async with client_for(router, max_retries=5) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate("x")
    assert type(info.value) is cls
    assert route.call_count == 1
    assert info.value.may_have_been_charged is True
    assert "charged" in str(info.value)
    assert "retry_ambiguous" in str(info.value)


@pytest.mark.parametrize(("error", "cls"), AMBIGUOUS)
async def test_failures_after_sending_are_retried_on_request(
    router: respx.MockRouter, error: httpx.HTTPError, cls: type[APIConnectionError]
) -> None:
    route = router.post(GENERATE).mock(side_effect=seq(error, error, ok("https://i/1")))
    async with client_for(router, retry_ambiguous=True) as client:
        assert (await client.generate("x")).urls == ("https://i/1",)
    assert route.call_count == 3

    route.reset()
    route.mock(side_effect=seq(error, ok("https://i/2")))
    async with client_for(router) as client:
        assert (await client.generate("x", retry_ambiguous=True)).urls == ("https://i/2",)
    assert route.call_count == 2


async def test_per_call_retry_ambiguous_false_overrides_the_client(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(httpx.ReadTimeout("read timed out"), ok("https://i/1"))
    )
    async with client_for(router, retry_ambiguous=True) as client:
        with pytest.raises(APITimeoutError):
            await client.generate("x", retry_ambiguous=False)
    assert route.call_count == 1


async def test_one_idempotency_key_per_call(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(
        side_effect=seq(
            server_error(),
            httpx.ConnectError("refused"),
            ok("https://i/1"),
            server_error(),
            ok("https://i/2"),
            ok("https://i/3"),
        )
    )
    async with client_for(router) as client:
        await client.generate("x")
        await client.generate("x")
        await client.generate("x")
    keys = [call.request.headers["idempotency-key"] for call in route.calls]
    assert len(keys) == 6
    assert all(len(k) >= 16 for k in keys)
    # The same key on every attempt of a call, a new key for every call.
    assert keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[4]
    assert len({keys[0], keys[3], keys[5]}) == 3


async def test_dead_server_stops_being_retried_when_the_budget_drains(
    router: respx.MockRouter,
) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    per_call: list[int] = []
    async with client_for(router) as client:
        for _ in range(40):
            before = route.call_count
            with pytest.raises(ServerError):
                await client.generate("x")
            per_call.append(route.call_count - before)
        assert client.retry_budget.retries_denied > 0
    assert per_call[:5] == [3] * 5
    # Once the budget is spent each call fails fast, after a single attempt.
    assert per_call[-15:] == [1] * 15
    assert sum(per_call) < 0.7 * 40 * 3


async def test_budget_is_shared_by_concurrent_calls(router: respx.MockRouter) -> None:
    route = router.post(GENERATE).mock(return_value=server_error())
    async with client_for(router) as client:

        async def call() -> None:
            with pytest.raises(ServerError):
                await client.generate("x")

        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(call)
    # Without the budget: 60 calls x 3 attempts.
    assert 60 <= route.call_count < 0.7 * 180


async def test_quarter_failing_server_keeps_being_retried() -> None:
    count = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return server_error() if count % 4 == 0 else ok("https://i/1")

    async with client_with(handler) as client:
        for _ in range(300):
            generation = await client.generate("x")
            assert generation.urls == ("https://i/1",)
        assert client.retry_budget.retries_denied == 0
    # Every fourth request failed and was retried.
    assert count >= 300 + 90


async def test_cancellation_is_not_retried() -> None:
    requests: list[httpx.Request] = []
    arrived = anyio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        arrived.set()
        await anyio.sleep(30)
        return ok("https://i/1")

    policy = RetryPolicy(max_retries=5, initial_delay=0.001, max_delay=0.01, retry_ambiguous=True)
    async with client_with(slow, retry_policy=policy) as client:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.generate, "x")
            await arrived.wait()
            tg.cancel_scope.cancel()
        elapsed = anyio.current_time() - start
        await anyio.sleep(0.05)
    assert len(requests) == 1
    assert elapsed < 1.0


async def test_timeout_scope_around_generate() -> None:
    requests: list[httpx.Request] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        await anyio.sleep(30)
        return ok("https://i/1")

    async with client_with(slow) as client:
        start = anyio.current_time()
        with anyio.move_on_after(0.2) as scope:
            await client.generate("x")
        elapsed = anyio.current_time() - start
        await anyio.sleep(0.05)
    assert scope.cancelled_caught
    assert len(requests) == 1
    assert elapsed < 1.0
