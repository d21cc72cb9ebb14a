"""Async Python SDK for the Nano Banana image API, with a safe batch runner.

Everything public is importable from here; see ``nanobanana_async.emulator`` for the embedded
API emulator.

The names load from their modules on first use (PEP 562): ``import nanobanana_async`` (and
the ``nanobanana`` command's ``--help``) imports neither httpx nor anyio nor the batch runner,
and each optional back end (psycopg, coredis, OpenTelemetry) only once it is used.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# The public names, each with the module (relative to this package) it loads from on first use:
# the one list of what the SDK offers (docs/index.md documents each name, and
# tests/test_public_api.py pins it). Everything else, with or without a leading underscore, is
# internal and may change.
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(
        (
            "BatchReport",
            "BatchRun",
            "BatchStats",
            "GracefulStop",
            "JobResult",
            "stop_on_signals",
        ),
        "batch",
    ),
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
    "RedisLimits": "limits.redis",  # loaded when Redis limits are first used
    **dict.fromkeys(
        (
            "BASE_SIZES",
            "DEFAULT_MODEL",
            "EXTENDED_SIZES",
            "MODELS",
            "Generation",
            "Job",
            "sizes_for",
        ),
        "models",
    ),
    **dict.fromkeys(("DEFAULT_PRICING", "CreditEstimate", "PricingTable"), "pricing"),
    **dict.fromkeys(("RetryBudget", "RetryPolicy"), "retry"),
    **dict.fromkeys(("AttemptEvent", "Hooks", "ResponseEvent", "RetryEvent"), "telemetry"),
}

__all__ = sorted(["__version__", *_PUBLIC])

if TYPE_CHECKING:
    # The same names for type checkers, which cannot follow __getattr__ (tests/test_public_api.py
    # checks that both lists agree).
    from .batch import BatchReport as BatchReport
    from .batch import BatchRun as BatchRun
    from .batch import BatchStats as BatchStats
    from .batch import GracefulStop as GracefulStop
    from .batch import JobResult as JobResult
    from .batch import stop_on_signals as stop_on_signals
    from .batch.stores import JobStore as JobStore
    from .batch.stores import JsonlStore as JsonlStore
    from .batch.stores import PostgresStore as PostgresStore
    from .batch.stores import SqliteStore as SqliteStore
    from .batch.stores import StoreError as StoreError
    from .batch.stores import StoreStatus as StoreStatus
    from .batch.stores import StoreUnavailableError as StoreUnavailableError
    from .batch.stores import open_store as open_store
    from .client import DEFAULT_BASE_URL as DEFAULT_BASE_URL
    from .client import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
    from .client import AsyncNanoBanana as AsyncNanoBanana
    from .errors import APIConnectionError as APIConnectionError
    from .errors import APIError as APIError
    from .errors import APITimeoutError as APITimeoutError
    from .errors import AuthenticationError as AuthenticationError
    from .errors import BadRequestError as BadRequestError
    from .errors import BudgetExceededError as BudgetExceededError
    from .errors import InsufficientCreditsError as InsufficientCreditsError
    from .errors import InvalidRequestError as InvalidRequestError
    from .errors import LimitsUnavailableError as LimitsUnavailableError
    from .errors import MalformedResponseError as MalformedResponseError
    from .errors import NanoBananaError as NanoBananaError
    from .errors import RateLimitError as RateLimitError
    from .errors import ServerError as ServerError
    from .limits import Limits as Limits
    from .limits import LimitsStatus as LimitsStatus
    from .limits import LocalLimits as LocalLimits
    from .limits.redis import RedisLimits as RedisLimits
    from .models import BASE_SIZES as BASE_SIZES
    from .models import DEFAULT_MODEL as DEFAULT_MODEL
    from .models import EXTENDED_SIZES as EXTENDED_SIZES
    from .models import MODELS as MODELS
    from .models import Generation as Generation
    from .models import Job as Job
    from .models import sizes_for as sizes_for
    from .pricing import DEFAULT_PRICING as DEFAULT_PRICING
    from .pricing import CreditEstimate as CreditEstimate
    from .pricing import PricingTable as PricingTable
    from .retry import RetryBudget as RetryBudget
    from .retry import RetryPolicy as RetryPolicy
    from .telemetry import AttemptEvent as AttemptEvent
    from .telemetry import Hooks as Hooks
    from .telemetry import ResponseEvent as ResponseEvent
    from .telemetry import RetryEvent as RetryEvent


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
