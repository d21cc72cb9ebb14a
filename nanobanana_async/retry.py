"""When to retry, how long to wait, and the retry budget that protects a failing server."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio
import attrs
import tenacity

from .errors import (
    APIConnectionError,
    APIError,
    InvalidRequestError,
    NanoBananaError,
    RateLimitError,
    ServerError,
)
from .limits import Cooldown, Limits, Permit

__all__ = [
    "AttemptHooks",
    "CallStats",
    "Cooldown",
    "RetryBudget",
    "RetryPolicy",
    "call_with_retries",
    "is_retryable",
]

logger = logging.getLogger("nanobanana_async")

T = TypeVar("T")


def _count(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(
            f"{attribute.name} must be >= 0 (a whole number), got {value!r}", param=attribute.name
        )


def _seconds(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise InvalidRequestError(
            f"{attribute.name} must be >= 0 seconds, got {value!r}",
            param=attribute.name,
        )


@attrs.frozen
class RetryPolicy:
    """How one call retries.

    Backoff starts at ``initial_delay`` and doubles up to ``max_delay``, each delay scaled by a
    random factor in [0.75, 1.0] so that many clients do not retry in lockstep. A server's
    ``Retry-After`` / ``retry-after-ms`` is honoured instead, up to ``max_retry_after``
    seconds; a longer demand fails the call rather than hanging it. ``retry_ambiguous``
    retries failures after which the server may already have generated and charged (read
    timeouts, connections dropped after the request was sent).
    """

    max_retries: int = attrs.field(default=2, validator=_count)
    initial_delay: float = attrs.field(default=0.5, validator=_seconds)
    max_delay: float = attrs.field(default=8.0, validator=_seconds)
    max_retry_after: float = attrs.field(default=60.0, validator=_seconds)
    retry_ambiguous: bool = False

    def backoff(self, retry_number: int) -> float:
        """The delay before retry number ``retry_number`` (1-based), jitter included."""
        base = min(self.max_delay, self.initial_delay * 2.0 ** (retry_number - 1))
        return base * (1.0 - 0.25 * random.random())


def is_retryable(exc: BaseException, policy: RetryPolicy) -> bool:
    """Whether ``exc`` is worth another attempt under ``policy`` (budget aside)."""
    if isinstance(exc, APIError):
        retryable = isinstance(exc, ServerError | RateLimitError) or 408 in (
            exc.status_code,
            exc.code,
        )
        if not retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= policy.max_retry_after
    if isinstance(exc, APIConnectionError):
        return not exc.may_have_been_charged or policy.retry_ambiguous
    return False


def _server_fault(exc: BaseException) -> bool:
    # Faults that say the server is unhealthy: what the retry budget counts against.
    return isinstance(exc, APIConnectionError) or (
        isinstance(exc, APIError) and is_retryable(exc, RetryPolicy(max_retry_after=float("inf")))
    )


@attrs.define
class RetryBudget:
    """A token bucket shared by every call of a client, after gRPC's retry throttling.

    Each failed attempt takes a token, each success gives back ``token_ratio``; retries are
    allowed only while more than half of ``max_tokens`` remain. Failures break even with
    successes at a failure share of ``token_ratio / (1 + token_ratio)`` (60% by default):
    a server failing a quarter of requests keeps being retried, a dead one soon is not.
    """

    max_tokens: float = 100.0
    token_ratio: float = 1.5
    tokens: float = attrs.field(default=None)
    retries_denied: int = 0

    def __attrs_post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.max_tokens

    def record_success(self) -> None:
        """An attempt succeeded: give back ``token_ratio`` tokens (up to ``max_tokens``)."""
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def record_failure(self) -> None:
        """An attempt failed: take one token."""
        self.tokens = max(0.0, self.tokens - 1.0)

    def allows_retry(self) -> bool:
        """Whether a retry may be spent now (counted in ``retries_denied`` when not)."""
        if self.tokens > self.max_tokens / 2:
            return True
        self.retries_denied += 1
        return False


class AttemptHooks(Protocol):
    """What a caller (the batch runner) does around each attempt of one call."""

    async def before_attempt(self, admit: Callable[[], Awaitable[None]]) -> None:
        """Awaited before each attempt; raising skips the attempt and ends the call with that
        exception. Must await ``admit`` once (the client's limits: cool-down, credits, start
        slot), as the last wait before the request goes out: a start slot used late would
        crowd the next one. Checks made after ``admit`` see every wait done."""
        ...

    def attempt_failed(self, outcome: BaseException) -> None:
        """An attempt that was started ended with ``outcome`` (an error, or a cancellation)."""
        ...


@attrs.define
class CallStats:
    """What one logical call went through: attempts made, retries slept."""

    attempts: int = 0


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    limits: Limits,
    stats: CallStats,
    hooks: AttemptHooks | None = None,
    what: str = "request",
    cost: int = 0,
    credits: Callable[[T], int] | None = None,
    on_cooldown: Callable[[float], None] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds or a failure is not worth retrying.

    Each attempt is admitted by ``limits`` (reserving ``cost`` credits) and then settled:
    spent (``credits`` of the result, else ``cost``), kept or released per the failure, and a
    429's ``Retry-After`` pauses every request consulting ``limits``. A fresh tenacity object
    per call: tenacity keeps per-run state on the object, so sharing one between concurrent
    tasks would mix their attempts. Sleeping goes through anyio, so Trio works; cancellation
    is never retried because only SDK errors are. ``on_cooldown(seconds)`` is told each time
    an attempt waited out a 429 cool-down before it was admitted.
    """

    def should_retry(state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            budget.record_success()
            return False
        exc = outcome.exception()
        if not isinstance(exc, Exception):
            return False
        if _server_fault(exc):
            budget.record_failure()
        elif isinstance(exc, APIError):
            budget.record_success()
        if state.attempt_number > policy.max_retries or not is_retryable(exc, policy):
            return False
        return budget.allows_retry()

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, APIError) and exc.retry_after is not None:
            return exc.retry_after
        return policy.backoff(state.attempt_number)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.info(
            "retrying %s in %.2fs (attempt %d of %d failed: %s)",
            what,
            state.upcoming_sleep,
            state.attempt_number,
            policy.max_retries + 1,
            exc,
        )

    async def one_attempt() -> T:
        permit: Permit | None = None

        async def admit() -> None:
            nonlocal permit
            if permit is None:
                permit = await limits.acquire(cost)

        try:
            if hooks is not None:
                await hooks.before_attempt(admit)
            await admit()  # a no-op when the hooks admitted the attempt
        except BaseException:
            if permit is not None:  # admitted, then not sent
                await _settle(limits, permit, what)
            raise
        assert permit is not None
        if permit.cooldown and on_cooldown is not None:
            on_cooldown(permit.cooldown)
        stats.attempts += 1
        try:
            result = await attempt()
        except BaseException as exc:
            if hooks is not None:
                hooks.attempt_failed(exc)
            await _settle(limits, permit, what, outcome=exc, pause=_pause(exc, policy))
            raise
        await _settle(limits, permit, what, spent=cost if credits is None else credits(result))
        return result

    # Most calls succeed at once: the first attempt runs outside tenacity, whose per-attempt
    # bookkeeping was a seventh of a batch's CPU per job. A failure enters tenacity as its
    # first attempt's outcome, so every retry decision is still tenacity's.
    try:
        result = await one_attempt()
    except Exception as exc:
        first_failure: Exception | None = exc
    else:
        budget.record_success()
        return result

    retrying = tenacity.AsyncRetrying(
        retry=should_retry,
        wait=wait,
        stop=tenacity.stop_never,
        sleep=anyio.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt_ctx in retrying:
        with attempt_ctx:
            if first_failure is not None:
                failure, first_failure = first_failure, None
                raise failure
            result = await one_attempt()
    return result


def _pause(exc: BaseException, policy: RetryPolicy) -> float | None:
    # A 429's Retry-After pauses every request (beyond the policy's cap the call fails instead).
    retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
    if retry_after is not None and retry_after <= policy.max_retry_after:
        return retry_after
    return None


async def _settle(limits: Limits, permit: Permit, what: str, **how: Any) -> None:
    # Shielded: a cancelled call still settles what it reserved. A settle that fails (shared
    # limits unreachable) never replaces the call's own outcome: the reservation then stays
    # held until its lease expires, counted as may-have-been-spent.
    with anyio.CancelScope(shield=True):
        try:
            await limits.settle(permit, **how)
        except NanoBananaError as exc:
            logger.warning("could not settle the limits of %s: %s", what, exc)
