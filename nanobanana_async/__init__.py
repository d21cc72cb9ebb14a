"""Async Python SDK for the Nano Banana image API, with a safe batch runner.

Everything public is importable from here; see ``nanobanana_async.emulator`` for the embedded
API emulator.

The names load from their modules on first use (PEP 562): ``import nanobanana_async`` (and
the ``nanobanana`` command's ``--help``) imports neither httpx nor anyio nor the batch runner,
and each optional back end (aiohttp, psycopg, coredis, OpenTelemetry) only once it is used.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .batch import BatchReport, BatchRun, BatchStats, JobResult
    from .batch.stores import (
        JobStore,
        JsonlStore,
        PostgresStore,
        SqliteStore,
        StoreError,
        StoreStatus,
        StoreUnavailableError,
        open_store,
    )
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
    from .limits.redis import RedisLimits
    from .models import (
        BASE_SIZES,
        DEFAULT_MODEL,
        EXTENDED_SIZES,
        MODELS,
        Generation,
        Job,
        sizes_for,
    )
    from .pricing import DEFAULT_PRICING, CreditEstimate, PricingTable
    from .retry import RetryBudget, RetryPolicy
    from .telemetry import AttemptEvent, Hooks, ResponseEvent, RetryEvent

# Public name -> the module (relative to this package) it is imported from on first use.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("BatchReport", "BatchRun", "BatchStats", "JobResult"), "batch"),
    **dict.fromkeys(
        (
            "JobStore",
            "JsonlStore",
            "PostgresStore",  # psycopg (extra ``postgres``) loads when a store is opened
            "SqliteStore",
            "StoreError",
            "StoreStatus",
            "StoreUnavailableError",
            "open_store",
        ),
        "batch.stores",
    ),
    **dict.fromkeys(("DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "AsyncNanoBanana"), "client"),
    **dict.fromkeys(
        (
            "APIConnectionError",
            "APIError",
            "APITimeoutError",
            "AuthenticationError",
            "BadRequestError",
            "BudgetExceededError",
            "InsufficientCreditsError",
            "InvalidRequestError",
            "LimitsUnavailableError",
            "MalformedResponseError",
            "NanoBananaError",
            "RateLimitError",
            "ServerError",
        ),
        "errors",
    ),
    **dict.fromkeys(("Limits", "LimitsStatus", "LocalLimits"), "limits"),
    "RedisLimits": "limits.redis",  # coredis (extra ``redis``) loads when Redis limits are used
    **dict.fromkeys(
        ("BASE_SIZES", "DEFAULT_MODEL", "EXTENDED_SIZES", "MODELS", "Generation", "Job"),
        "models",
    ),
    "sizes_for": "models",
    **dict.fromkeys(("DEFAULT_PRICING", "CreditEstimate", "PricingTable"), "pricing"),
    **dict.fromkeys(("RetryBudget", "RetryPolicy"), "retry"),
    **dict.fromkeys(("AttemptEvent", "Hooks", "ResponseEvent", "RetryEvent"), "telemetry"),
}

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
    "StoreUnavailableError",
    "__version__",
    "open_store",
    "sizes_for",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
