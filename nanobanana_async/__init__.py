"""Async Python SDK for the Nano Banana image API, with a safe batch runner.

Everything public is importable from here; see ``nanobanana_async.emulator`` for the embedded
API emulator.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .batch import BatchReport, BatchRun, BatchStats, JobResult
from .batch.stores import JobStore, JsonlStore, SqliteStore, StoreError, StoreStatus, open_store
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
from .telemetry import AttemptEvent, Hooks, ResponseEvent, RetryEvent

if TYPE_CHECKING:
    from .batch.stores import PostgresStore

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
    "AttemptEvent",
    "AuthenticationError",
    "BadRequestError",
    "BatchReport",
    "BatchRun",
    "BatchStats",
    "BudgetExceededError",
    "CreditEstimate",
    "Generation",
    "Hooks",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "Job",
    "JobResult",
    "JobStore",
    "JsonlStore",
    "Limits",
    "LimitsStatus",
    "LimitsUnavailableError",
    "LocalLimits",
    "MalformedResponseError",
    "NanoBananaError",
    "PostgresStore",
    "PricingTable",
    "RateLimitError",
    "RedisLimits",
    "ResponseEvent",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "SqliteStore",
    "StoreError",
    "StoreStatus",
    "__version__",
    "open_store",
    "sizes_for",
]


def __getattr__(name: str) -> Any:
    # The Postgres store imports psycopg (extra ``postgres``): only when it is asked for.
    if name == "PostgresStore":
        from .batch.stores import PostgresStore

        return PostgresStore
    # RedisLimits lives beside coredis, which is imported only when Redis limits are used.
    if name == "RedisLimits":
        from .limits.redis import RedisLimits

        return RedisLimits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
