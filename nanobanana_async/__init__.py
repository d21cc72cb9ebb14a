"""Async Python SDK for the Nano Banana image API, with a safe batch runner.

Everything public is importable from here; see ``nanobanana_async.emulator`` for the embedded
API emulator.
"""

from ._version import __version__
from .batch import BatchReport, BatchRun, BatchStats, JobResult
from .client import DEFAULT_BASE_URL, DEFAULT_TIMEOUT, AsyncNanoBanana
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    NanoBananaError,
    RateLimitError,
    ServerError,
)
from .models import BASE_SIZES, DEFAULT_MODEL, EXTENDED_SIZES, MODELS, Generation, Job, sizes_for
from .pricing import DEFAULT_PRICING, CreditEstimate, PricingTable
from .retry import RetryBudget, RetryPolicy
from .telemetry import AttemptEvent, Hooks, ResponseEvent, RetryEvent

__all__ = [
    "BASE_SIZES",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_PRICING",
    "DEFAULT_TIMEOUT",
    "EXTENDED_SIZES",
    "MODELS",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncNanoBanana",
    "AttemptEvent",
    "AuthenticationError",
    "BadRequestError",
    "BatchReport",
    "BatchRun",
    "BatchStats",
    "CreditEstimate",
    "Generation",
    "Hooks",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "Job",
    "JobResult",
    "MalformedResponseError",
    "NanoBananaError",
    "PricingTable",
    "RateLimitError",
    "ResponseEvent",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "__version__",
    "sizes_for",
]
