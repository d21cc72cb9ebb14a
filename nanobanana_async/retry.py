"""When to retry, how long to wait, and the retry budget that protects a failing server."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import attrs

from .errors import (
    APIConnectionError,
    APIError,
    NanoBananaError,
    RateLimitError,
    ServerError,
    say_retried,
)
from .limits import Cooldown, Limits, LocalLimits, Permit
from .limits.base import ending
from .validation import seconds, validator, whole

if TYPE_CHECKING:
    import tenacity

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

_SECONDS = validator(seconds, infinite=True)  # no cap at all is a cap too


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

    max_retries: int = attrs.field(default=2, validator=validator(whole, minimum=0))
    initial_delay: float = attrs.field(default=0.5, validator=_SECONDS)
    max_delay: float = attrs.field(default=8.0, validator=_SECONDS)
    max_retry_after: float = attrs.field(default=60.0, validator=_SECONDS)
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
        exception. Must await ``admit`` once (the call's limits: cool-down, credits, start
        slot), as the last wait before the request goes out: a start slot used late would
        crowd the next one. Checks made after ``admit`` see every wait done; an attempt they
        stop is settled as never sent."""
        ...

    def attempt_failed(self, outcome: BaseException) -> None:
        """An attempt that was started ended with ``outcome`` (an error, or a cancellation)."""
        ...


@attrs.define
class CallStats:
    """What one logical call went through: attempts made, and the credits of those whose
    reservation the money rule kept (:func:`~nanobanana_async.limits.base.ending`): the
    server may have charged them, their answers never read."""

    attempts: int = 0
    uncertain: int = 0


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    limits: Limits,
    stats: CallStats,
    hooks: AttemptHooks | None = None,
    what: str | Callable[[], str] = "request",
    cost: int = 0,
    credits: Callable[[T], int] | None = None,
    on_cooldown: Callable[[float], None] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds or a failure is not worth retrying.

    Each attempt is admitted by ``limits`` (reserving ``cost`` credits) and then settled:
    spent (``credits`` of the result, else ``cost``), kept or released per the failure, and a
    429's ``Retry-After`` pauses every request consulting ``limits``. Retries are tenacity's,
    a fresh tenacity object per call: tenacity keeps per-run state on the object, so sharing
    one between concurrent tasks would mix their attempts. Sleeping goes through anyio, so
    Trio works; cancellation is never retried because only SDK errors are.
    ``on_cooldown(seconds)`` is told each time an attempt waited out a 429 cool-down before it
    was admitted. ``what`` (or what it returns, called only when a message needs it) names
    the call in log messages.
    """
    call = _Call(attempt, policy, limits, stats, hooks, what, cost, credits, on_cooldown)
    # Most calls succeed at once: the first attempt runs outside tenacity (imported, and its
    # closures built, only on a failure), whose per-attempt bookkeeping was a seventh of a
    # batch's CPU per job. A failure enters tenacity as its first attempt's outcome, so every
    # retry decision is still tenacity's.
    try:
        result = await call.one()
    except Exception as exc:
        failure = exc
    else:
        budget.record_success()
        return result
    # Retried outside the except block: a later error must not carry the first as its
    # context, nor keep its frames alive through the backoff sleeps.
    return await _retry_after_failure(failure, call, policy, budget)


class _Call(Generic[T]):
    """One logical call's attempts: admission by the limits, the hooks, settling."""

    __slots__ = (
        "_attempt",
        "_cost",
        "_credits",
        "_hooks",
        "_limits",
        "_local",
        "_on_cooldown",
        "_policy",
        "_settle_now",
        "_stats",
        "_what",
        "permit",
    )

    def __init__(
        self,
        attempt: Callable[[], Awaitable[T]],
        policy: RetryPolicy,
        limits: Limits,
        stats: CallStats,
        hooks: AttemptHooks | None,
        what: str | Callable[[], str],
        cost: int,
        credits: Callable[[T], int] | None,
        on_cooldown: Callable[[float], None] | None,
    ) -> None:
        self._attempt = attempt
        self._policy = policy
        self._limits = limits
        # The default limits settle without awaiting anything: no shielded scope, no await.
        self._local = limits if type(limits) is LocalLimits else None
        # Others may, some of the time (RedisLimits when open: a settlement is posted).
        self._settle_now = getattr(limits, "settle_now", None) if self._local is None else None
        self._stats = stats
        self._hooks = hooks
        self._what = what
        self._cost = cost
        self._credits = credits
        self._on_cooldown = on_cooldown
        self.permit: Permit | None = None

    @property
    def what(self) -> str:
        what = self._what
        return what if isinstance(what, str) else what()

    async def admit(self) -> None:
        """Admit the attempt by the limits (once; later calls are no-ops)."""
        if self.permit is None:
            local = self._local
            permit = local.acquire_now(self._cost) if local is not None else None
            self.permit = permit if permit is not None else await self._limits.acquire(self._cost)

    async def one(self) -> T:
        """One attempt: admitted, sent, settled."""
        self.permit = None
        hooks = self._hooks
        try:
            if hooks is not None:
                await hooks.before_attempt(self.admit)
            if self.permit is None:  # the hooks did not admit it
                await self.admit()
        except BaseException:
            if self.permit is not None:  # admitted, then not sent
                await self._settle(self.permit)
            raise
        permit = self.permit
        assert permit is not None
        if permit.cooldown and self._on_cooldown is not None:
            self._on_cooldown(permit.cooldown)
        self._stats.attempts += 1
        try:
            result = await self._attempt()
        except BaseException as exc:
            if ending(None, exc) == "keep":
                self._stats.uncertain += self._cost
            if hooks is not None:
                hooks.attempt_failed(exc)
            await self._settle(permit, outcome=exc, pause=_pause(exc, self._policy))
            raise
        credits = self._credits
        await self._settle(permit, spent=self._cost if credits is None else credits(result))
        return result

    async def _settle(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> None:
        local = self._local
        if local is not None:
            local.settle_now(permit, spent=spent, outcome=outcome, pause=pause)
            return
        now = self._settle_now
        if now is not None and now(permit, spent=spent, outcome=outcome, pause=pause):
            return
        await _settle(self._limits, permit, self.what, spent=spent, outcome=outcome, pause=pause)


async def _retry_after_failure(
    first_failure: Exception, call: _Call[T], policy: RetryPolicy, budget: RetryBudget
) -> T:
    """The rest of :func:`call_with_retries` once its first attempt failed: tenacity's loop."""
    import tenacity  # imported on the first failure, not with the SDK

    def should_retry(state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            budget.record_success()
            return False
        exc = outcome.exception()
        if not isinstance(exc, Exception):
            return False
        if policy.retry_ambiguous and isinstance(exc, APIConnectionError):
            say_retried(exc, state.attempt_number, policy.max_retries + 1)
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
            call.what,
            state.upcoming_sleep,
            state.attempt_number,
            policy.max_retries + 1,
            exc,
        )

    retrying = tenacity.AsyncRetrying(
        retry=should_retry,
        wait=wait,
        stop=tenacity.stop_never,
        sleep=anyio.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    pending: Exception | None = first_failure
    async for attempt_ctx in retrying:
        with attempt_ctx:
            if pending is not None:
                failure, pending = pending, None
                raise failure
            result = await call.one()
    return result


def _pause(exc: BaseException, policy: RetryPolicy) -> float | None:
    # A 429's Retry-After pauses every request (beyond the policy's cap the call fails instead).
    retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
    if retry_after is not None and retry_after <= policy.max_retry_after:
        return retry_after
    return None


async def _settle(limits: Limits, permit: Permit, what: str, **how: Any) -> None:
    # Shielded: a cancelled call still settles what it reserved. A settle that fails (shared
    # limits unreachable) never replaces the call's own outcome: the limits send it again once
    # they can (RedisLimits does), the reservation held meanwhile.
    with anyio.CancelScope(shield=True):
        try:
            await limits.settle(permit, **how)
        except NanoBananaError as exc:
            logger.warning("could not settle the limits of %s: %s", what, exc)
