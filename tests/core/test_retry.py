"""RetryPolicy, is_retryable, RetryBudget, Cooldown and call_with_retries, without HTTP."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import pytest

from nanobanana_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    RateLimitError,
    RetryBudget,
    RetryPolicy,
    ServerError,
)
from nanobanana_async.limits import LocalLimits
from nanobanana_async.retry import CallStats, Cooldown, call_with_retries, is_retryable

FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)


# -- RetryPolicy -----------------------------------------------------------------------------


def test_defaults_follow_the_design() -> None:
    policy = RetryPolicy()
    assert policy.max_retries == 2
    assert policy.initial_delay == pytest.approx(0.5)
    assert policy.max_delay == pytest.approx(8.0)
    assert policy.retry_ambiguous is False


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy()
    random.seed(1234)
    for retry_number, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0)]:
        delays = [policy.backoff(retry_number) for _ in range(200)]
        assert all(0.75 * base <= d <= base for d in delays), (retry_number, delays)
        # Jitter: not every client waits the same.
        assert len(set(delays)) > 100
    assert policy.backoff(50) <= 8.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"initial_delay": -0.1},
        {"max_delay": -1.0},
        {"max_retry_after": -1.0},
    ],
)
def test_policy_refuses_negative_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError, match=r"must be (an integer|seconds) >= 0") as caught:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert caught.value.param == next(iter(kwargs))
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", [float("nan"), "1", True, None])
def test_policy_refuses_what_is_not_a_number(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="initial_delay"):
        RetryPolicy(initial_delay=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="max_retries"):
        RetryPolicy(max_retries=1.5 if value is None else value)  # type: ignore[arg-type]


# -- is_retryable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServerError("down", status_code=500, code=500), True),
        (ServerError("bad gateway", status_code=502), True),
        (ServerError("down", status_code=200, code=500), True),
        (RateLimitError("slow", status_code=429), True),
        (RateLimitError("slow", status_code=429, retry_after=5.0), True),
        (APIError("timeout", status_code=408), True),
        (APIError("timeout", status_code=200, code=408), True),
        (BadRequestError("bad", status_code=400, code=400), False),
        (InsufficientCreditsError("insufficient credits", status_code=400, code=400), False),
        (AuthenticationError("who", status_code=401, code=401), False),
        (APIError("forbidden", status_code=403), False),
        (APIError("odd", status_code=200, code=1234), False),
        (MalformedResponseError("odd", status_code=200), False),
        (APIConnectionError("refused", may_have_been_charged=False), True),
        (APITimeoutError("connect timeout", may_have_been_charged=False), True),
        (APITimeoutError("read timeout", may_have_been_charged=True), False),
        (APIConnectionError("dropped", may_have_been_charged=True), False),
        (ValueError("not ours"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_is_retryable(error: BaseException, expected: bool) -> None:
    assert is_retryable(error, RetryPolicy()) is expected


def test_ambiguous_failures_are_retryable_on_request() -> None:
    policy = RetryPolicy(retry_ambiguous=True)
    assert is_retryable(APITimeoutError("read timeout", may_have_been_charged=True), policy)
    assert is_retryable(APIConnectionError("dropped", may_have_been_charged=True), policy)


def test_retry_after_beyond_the_cap_is_not_retryable() -> None:
    policy = RetryPolicy(max_retry_after=10.0)
    assert is_retryable(RateLimitError("x", status_code=429, retry_after=10.0), policy)
    assert not is_retryable(RateLimitError("x", status_code=429, retry_after=10.5), policy)
    assert not is_retryable(ServerError("x", status_code=503, retry_after=3600.0), policy)


# -- RetryBudget -----------------------------------------------------------------------------


def test_budget_starts_full() -> None:
    budget = RetryBudget()
    assert budget.tokens == budget.max_tokens
    assert budget.allows_retry()
    assert budget.retries_denied == 0


def test_dead_server_drains_the_budget() -> None:
    budget = RetryBudget()
    allowed = 0
    for _ in range(1000):
        budget.record_failure()
        if budget.allows_retry():
            allowed += 1
    # Retries stop once half of the tokens are gone, and stay stopped.
    assert allowed == int(budget.max_tokens / 2) - 1
    assert budget.retries_denied == 1000 - allowed
    assert not budget.allows_retry()
    assert budget.tokens >= 0.0


def test_budget_refills_with_successes() -> None:
    budget = RetryBudget()
    for _ in range(200):
        budget.record_failure()
    assert not budget.allows_retry()
    for _ in range(100):
        budget.record_success()
    assert budget.allows_retry()
    assert budget.tokens <= budget.max_tokens


def failure_pattern(share: float, n: int, seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < share for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_quarter_failing_server_keeps_being_retried(seed: int) -> None:
    budget = RetryBudget()
    for failed in failure_pattern(0.25, 20_000, seed):
        if failed:
            budget.record_failure()
            assert budget.allows_retry()
        else:
            budget.record_success()
    assert budget.retries_denied == 0


@pytest.mark.parametrize("share", [0.75, 0.9])
def test_mostly_failing_server_stops_being_retried(share: float) -> None:
    budget = RetryBudget()
    denied_late = 0
    for i, failed in enumerate(failure_pattern(share, 5_000, 7)):
        if failed:
            budget.record_failure()
            if not budget.allows_retry() and i > 2_500:
                denied_late += 1
        else:
            budget.record_success()
    assert denied_late > 0
    assert budget.retries_denied > 1_000


# -- Cooldown --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cooldown_waits_until_the_pause_ends() -> None:
    cooldown = Cooldown()
    start = anyio.current_time()
    await cooldown.wait()
    assert anyio.current_time() - start < 0.05
    cooldown.pause(0.2)
    cooldown.pause(0.05)  # a shorter pause never shortens a longer one
    await cooldown.wait()
    assert 0.19 <= anyio.current_time() - start < 1.5


@pytest.mark.anyio
async def test_cooldown_extended_while_waiting() -> None:
    cooldown = Cooldown()
    start = anyio.current_time()
    cooldown.pause(0.1)

    async def extend() -> None:
        await anyio.sleep(0.05)
        cooldown.pause(0.2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(extend)
        await cooldown.wait()
    assert 0.24 <= anyio.current_time() - start < 1.5


# -- call_with_retries -----------------------------------------------------------------------


async def run(
    outcomes: list[BaseException | str],
    policy: RetryPolicy = FAST,
    budget: RetryBudget | None = None,
    limits: LocalLimits | None = None,
) -> tuple[str | BaseException, int, CallStats]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        outcome = outcomes[min(len(calls) - 1, len(outcomes) - 1)]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    stats = CallStats()
    result: str | BaseException
    try:
        result = await call_with_retries(
            attempt,
            policy=policy,
            budget=budget or RetryBudget(),
            limits=limits or LocalLimits(),
            stats=stats,
        )
    except Exception as exc:
        result = exc
    assert stats.attempts == len(calls)
    return result, len(calls), stats


def server_error() -> ServerError:
    return ServerError("down", status_code=500, code=500)


@pytest.mark.anyio
async def test_success_first_time() -> None:
    result, calls, _ = await run(["ok"])
    assert result == "ok"
    assert calls == 1


@pytest.mark.anyio
@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
async def test_server_errors_are_retried_exactly_max_retries_times(max_retries: int) -> None:
    policy = RetryPolicy(max_retries=max_retries, initial_delay=0.001, max_delay=0.01)
    result, calls, _ = await run([server_error()], policy)
    assert isinstance(result, ServerError)
    assert calls == max_retries + 1


@pytest.mark.anyio
async def test_the_last_error_does_not_carry_the_first_as_its_context() -> None:
    # The retries run outside the first attempt's except block: a traceback shows one error,
    # not "during handling of the above exception, another exception occurred".
    first, last = server_error(), ServerError("still down", status_code=503, code=503)
    result, calls, _ = await run([first, server_error(), last])
    assert result is last
    assert calls == 3
    assert last.__context__ is None


@pytest.mark.anyio
async def test_recovers_after_server_errors() -> None:
    result, calls, _ = await run([server_error(), server_error(), "ok"])
    assert result == "ok"
    assert calls == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", status_code=400, code=400),
        InsufficientCreditsError("insufficient credits", status_code=200, code=400),
        AuthenticationError("who", status_code=401, code=401),
        MalformedResponseError("odd", status_code=200),
        APITimeoutError("read", may_have_been_charged=True),
    ],
)
async def test_non_retryable_errors_are_raised_at_once(error: Exception) -> None:
    result, calls, _ = await run([error, "ok"])
    assert result is error
    assert calls == 1


@pytest.mark.anyio
async def test_foreign_exceptions_are_not_retried() -> None:
    error = ZeroDivisionError()
    result, calls, _ = await run([error, "ok"])
    assert result is error
    assert calls == 1


@pytest.mark.anyio
async def test_retry_after_is_used_as_the_wait() -> None:
    limits = LocalLimits()
    start = anyio.current_time()
    limited = RateLimitError("slow", status_code=429, retry_after=0.3)
    result, calls, _ = await run([limited, "ok"], limits=limits)
    elapsed = anyio.current_time() - start
    assert result == "ok"
    assert calls == 2
    assert 0.29 <= elapsed < 2.0
    # The pause is shared with every other call of the client.
    assert limits.cooldown.until >= start + 0.3


@pytest.mark.anyio
async def test_retry_after_beyond_the_cap_fails_at_once() -> None:
    limits = LocalLimits()
    policy = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_retry_after=1.0)
    start = anyio.current_time()
    limited = RateLimitError("slow", status_code=429, retry_after=30.0)
    result, calls, _ = await run([limited, "ok"], policy, limits=limits)
    assert result is limited
    assert calls == 1
    assert anyio.current_time() - start < 0.5
    assert limits.cooldown.until == 0.0


@pytest.mark.anyio
async def test_budget_counts_attempts() -> None:
    budget = RetryBudget()
    await run([server_error(), server_error(), "ok"], budget=budget)
    # Two failed attempts take a token each, the success gives back token_ratio.
    assert budget.tokens == pytest.approx(budget.max_tokens - 2 + budget.token_ratio)
    budget = RetryBudget(tokens=60.0)
    await run([server_error()], budget=budget)
    assert budget.tokens == pytest.approx(57.0)


@pytest.mark.anyio
async def test_client_errors_do_not_drain_the_budget() -> None:
    budget = RetryBudget(tokens=60.0)
    for _ in range(30):
        await run([BadRequestError("bad", status_code=400, code=400)], budget=budget)
    assert budget.tokens >= 60.0


@pytest.mark.anyio
async def test_drained_budget_stops_retries() -> None:
    budget = RetryBudget(tokens=51.0)
    result, calls, _ = await run([server_error(), "ok"], budget=budget)
    assert isinstance(result, ServerError)
    assert calls == 1
    assert budget.retries_denied == 1


@pytest.mark.anyio
async def test_cancellation_is_not_retried() -> None:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        await anyio.sleep(30)
        return "never"

    start = anyio.current_time()
    with anyio.move_on_after(0.1) as scope:
        await call_with_retries(
            attempt,
            policy=FAST,
            budget=RetryBudget(),
            limits=LocalLimits(),
            stats=CallStats(),
        )
    assert scope.cancelled_caught
    assert calls == [1]
    assert anyio.current_time() - start < 1.0


@pytest.mark.anyio
async def test_hooks_run_around_every_attempt() -> None:
    events: list[str] = []

    class Hooks:
        async def before_attempt(self, admit: Callable[[], Awaitable[None]]) -> None:
            events.append("before")
            await admit()

        def attempt_failed(self, outcome: BaseException) -> None:
            events.append(f"failed: {type(outcome).__name__}")

    async def attempt() -> str:
        events.append("attempt")
        if events.count("attempt") < 3:
            raise server_error()
        return "ok"

    stats = CallStats()
    result = await call_with_retries(
        attempt,
        policy=FAST,
        budget=RetryBudget(),
        limits=LocalLimits(),
        stats=stats,
        hooks=Hooks(),
    )
    assert result == "ok"
    assert events == ["before", "attempt", "failed: ServerError"] * 2 + ["before", "attempt"]
    assert stats.attempts == 3


@pytest.mark.anyio
async def test_a_cancelled_attempt_is_reported_as_failed() -> None:
    outcomes: list[BaseException] = []

    class Hooks:
        async def before_attempt(self, admit: Callable[[], Awaitable[None]]) -> None:
            await admit()

        def attempt_failed(self, outcome: BaseException) -> None:
            outcomes.append(outcome)

    async def attempt() -> str:
        await anyio.sleep(10)
        return "never"

    with anyio.move_on_after(0.01):
        await call_with_retries(
            attempt,
            policy=FAST,
            budget=RetryBudget(),
            limits=LocalLimits(),
            stats=CallStats(),
            hooks=Hooks(),
        )
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], anyio.get_cancelled_exc_class())


@pytest.mark.anyio
async def test_a_hook_raising_before_an_attempt_ends_the_call_unsent() -> None:
    sent: list[str] = []

    class Refuse(Exception):
        pass

    class Hooks:
        async def before_attempt(self, admit: Callable[[], Awaitable[None]]) -> None:
            raise Refuse

        def attempt_failed(self, outcome: BaseException) -> None:
            raise AssertionError("no attempt was made")

    async def attempt() -> str:
        sent.append("x")
        return "ok"

    stats = CallStats()
    with pytest.raises(Refuse):
        await call_with_retries(
            attempt,
            policy=FAST,
            budget=RetryBudget(),
            limits=LocalLimits(),
            stats=stats,
            hooks=Hooks(),
        )
    assert sent == []
    assert stats.attempts == 0


@pytest.mark.anyio
async def test_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="nanobanana_async")
    await run([server_error(), "ok"])
    messages = [r.getMessage() for r in caplog.records if r.name == "nanobanana_async"]
    assert any("retrying" in m and "down" in m for m in messages), messages
