"""Event hooks for callers without OpenTelemetry: what each hook gets, and how hooks are called.

``AsyncNanoBanana(..., hooks=Hooks(...))``. Each hook is a plain or an ``async`` callable
taking one event. A hook that raises is logged on the ``nanobanana_async`` logger and
ignored: it never changes what a call or a batch does. Hooks run inline, on the task of the
call they describe, so a slow hook slows that call down; hand heavy work to a queue.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..models import Job

__all__ = ["AttemptEvent", "Hooks", "ResponseEvent", "RetryEvent", "call_hook"]

logger = logging.getLogger("nanobanana_async")

_optional_callable = attrs.validators.optional(attrs.validators.is_callable())


@attrs.frozen
class AttemptEvent:
    """An attempt is about to be sent (after any cool-down, rate limit or backoff).

    ``attempt`` counts from 1; ``idempotency_key`` is the same on every attempt of one call.
    """

    job: Job
    attempt: int
    idempotency_key: str


@attrs.frozen
class ResponseEvent:
    """An attempt ended: with a response, or without one (``status_code`` is then ``None``).

    ``outcome`` is one of :data:`~nanobanana_async.telemetry.OUTCOMES` (``"success"``,
    ``"server_error"``, ``"connection_lost"``, ...), ``error`` the exception the attempt ended
    with (``None`` on success), ``elapsed`` its duration in seconds (the HTTP exchange only),
    ``may_have_been_charged`` whether a failed attempt may have been charged all the same (its
    answer was lost after the request was sent). ``headers`` are the response's headers.
    Not called for an attempt that was cancelled.
    """

    job: Job
    attempt: int
    idempotency_key: str
    status_code: int | None
    outcome: str
    error: BaseException | None
    elapsed: float
    may_have_been_charged: bool
    headers: Mapping[str, str] | None = None


@attrs.frozen
class RetryEvent:
    """A retry is being made: attempt number ``attempt`` (2 or more) is about to start.

    ``reason`` is the outcome of the attempt it repeats (``"server_error"``,
    ``"rate_limited"``, ``"connect_error"``, ...) and ``error`` that attempt's exception;
    ``waited`` the seconds since it failed (backoff, cool-down and any batch rate limit).
    """

    job: Job
    attempt: int
    idempotency_key: str
    reason: str
    error: BaseException
    waited: float


@attrs.frozen
class Hooks:
    """Callbacks for what the client does; every one optional, plain or ``async``.

    - ``before_attempt(AttemptEvent)``: an attempt is about to be sent.
    - ``after_response(ResponseEvent)``: an attempt ended, with its HTTP status (or none).
    - ``on_retry(RetryEvent)``: a retry is being made, and why.
    - ``on_job_result(JobResult)``: a job of a batch finished (succeeded, failed or skipped).

    They see every request on every transport (the SDK's h11 pool, a caller's ``transport`` or
    ``http_client``). An exception raised by a hook is logged and ignored.
    """

    before_attempt: Callable[[AttemptEvent], Any] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    after_response: Callable[[ResponseEvent], Any] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    on_retry: Callable[[RetryEvent], Any] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    # Typed loosely: JobResult lives in the batch package, above this one.
    on_job_result: Callable[[Any], Any] | None = attrs.field(
        default=None, validator=_optional_callable
    )


async def call_hook(name: str, hook: Callable[[Any], Any], event: object) -> None:
    """Call ``hook(event)``, awaiting what it returns if awaitable; log and swallow its errors.

    Cancellation is not swallowed: it belongs to the call, not to the hook.
    """
    try:
        result = hook(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.warning("the %s hook raised an exception (ignored)", name, exc_info=True)
