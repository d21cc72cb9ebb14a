"""Async Python SDK for the Nano Banana image API, with a safe batch runner.

Everything public is importable from here; see ``nanobanana_async.emulator`` for the embedded
API emulator.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .batch import BatchReport, BatchRun, BatchStats, JobResult
from .client import DEFAULT_BASE_URL, DEFAULT_TIMEOUT, AsyncNanoBanana
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    InsufficientCreditsError,
    InvalidRequestError,
    LimitsUnavailableError,
    MalformedResponseError,
    NanoBananaError,
    RateLimitError,
    ServerError,
)
from .limits import Limits, LimitsStatus, LocalLimits
from .models import BASE_SIZES, DEFAULT_MODEL, EXTENDED_SIZES, MODELS, Generation, Job, sizes_for
from .pricing import DEFAULT_PRICING, CreditEstimate, PricingTable
from .retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:
    from .limits.redis import RedisLimits

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
    "AuthenticationError",
    "BadRequestError",
    "BatchReport",
    "BatchRun",
    "BatchStats",
    "BudgetExceededError",
    "CreditEstimate",
    "Generation",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "Job",
    "JobResult",
    "Limits",
    "LimitsStatus",
    "LimitsUnavailableError",
    "LocalLimits",
    "MalformedResponseError",
    "NanoBananaError",
    "PricingTable",
    "RateLimitError",
    "RedisLimits",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "__version__",
    "sizes_for",
]


def __getattr__(name: str) -> Any:
    # RedisLimits lives beside coredis, which is imported only when Redis limits are used.
    if name == "RedisLimits":
        from .limits.redis import RedisLimits

        return RedisLimits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
