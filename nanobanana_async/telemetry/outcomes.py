"""What an attempt came to, in one low-cardinality word: request outcomes and retry reasons.

One classification serves the ``nanobanana.request.outcome`` and ``nanobanana.retry.reason``
attributes, the hooks' events and the CLI's figures, so a dashboard and a ``--metrics-json``
file name the same things the same way.
"""

from __future__ import annotations

from typing import Final

from ..errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    MalformedResponseError,
    RateLimitError,
    ServerError,
)

__all__ = ["OUTCOMES", "error_type", "outcome_of"]

#: Every value :func:`outcome_of` returns.
OUTCOMES: Final = (
    "success",
    "rate_limited",  # HTTP 429 (retried, after the cool-down)
    "server_error",  # 5xx, JSON or not (retried)
    "request_timeout",  # 408 (retried)
    "bad_request",  # 400: invalid parameters (never retried)
    "insufficient_credits",  # never retried; stops a batch
    "authentication_error",  # 401; never retried, stops a batch
    "malformed_response",  # a success status whose body is unreadable: may have been charged
    "api_error",  # any other error answer
    "connect_error",  # the request never reached the server (connect or write failed)
    "connect_timeout",  # timed out before the request was sent
    "connection_lost",  # dropped after the request was sent: may have been charged
    "read_timeout",  # no answer in time after sending: may have been charged
    "cancelled",  # the caller cancelled the attempt
    "error",  # anything else (a bug, an unexpected exception)
)


def outcome_of(error: BaseException | None) -> str:
    """The outcome of an attempt that ended with ``error`` (``None``: it succeeded).

    A retry's reason is the outcome of the attempt it repeats.
    """
    if error is None:
        return "success"
    if isinstance(error, APIError):
        if isinstance(error, RateLimitError):
            return "rate_limited"
        if isinstance(error, ServerError):
            return "server_error"
        if isinstance(error, InsufficientCreditsError):
            return "insufficient_credits"
        if isinstance(error, BadRequestError):
            return "bad_request"
        if isinstance(error, AuthenticationError):
            return "authentication_error"
        if isinstance(error, MalformedResponseError):
            return "malformed_response"
        if 408 in (error.status_code, error.code):
            return "request_timeout"
        return "api_error"
    if isinstance(error, APIConnectionError):
        timeout = isinstance(error, APITimeoutError)
        if error.may_have_been_charged:
            return "read_timeout" if timeout else "connection_lost"
        return "connect_timeout" if timeout else "connect_error"
    if not isinstance(error, Exception):
        return "cancelled"  # CancelledError, trio.Cancelled, KeyboardInterrupt
    return "error"


def error_type(error: BaseException) -> str:
    """The ``error.type`` attribute for ``error``: its outcome, or its class for the unexpected."""
    outcome = outcome_of(error)
    return type(error).__qualname__ if outcome == "error" else outcome
