"""The public line: exactly these names are the SDK's promise, each documented, each loaded
lazily from one list, and the plumbing the batch runner uses is not among them."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import nanobanana_async
from nanobanana_async import AsyncNanoBanana

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nanobanana_async" / "__init__.py"

PUBLIC = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncNanoBanana",
    "AttemptEvent",
    "AuthenticationError",
    "BASE_SIZES",
    "BadRequestError",
    "BatchReport",
    "BatchRun",
    "BatchStats",
    "BudgetExceededError",
    "CreditEstimate",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_PRICING",
    "DEFAULT_TIMEOUT",
    "EXTENDED_SIZES",
    "Generation",
    "GracefulStop",
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
    "MODELS",
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
    "stop_on_signals",
]

CLIENT = [
    "aclose",
    "base_url",
    "batch",
    "download",
    "estimate",
    "generate",
    "limits",
    "make_job",
    "pricing",
    "retry_budget",
    "retry_policy",
    "run_batch",
    "run_worker",
    "with_options",
    "worker",
]


def test_the_public_names_are_exactly_these() -> None:
    assert nanobanana_async.__all__ == sorted(PUBLIC)
    assert set(PUBLIC) <= set(dir(nanobanana_async))


def test_type_checkers_see_the_names_the_package_loads() -> None:
    # The names are listed once for the package (with the module each loads from) and once for
    # type checkers, which cannot follow __getattr__: both must say the same.
    tree = ast.parse(PACKAGE.read_text("utf-8"))
    seen: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                assert stmt.level == 1
                for alias in stmt.names:
                    assert alias.asname == alias.name, "a re-export is written `X as X`"
                    seen[alias.name] = stmt.module or ""
    loaded = dict(nanobanana_async._PUBLIC)
    assert seen == loaded
    for name, module in loaded.items():
        value = getattr(nanobanana_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith(f"nanobanana_async.{module}"), name


def test_every_public_name_is_documented() -> None:
    index = (ROOT / "docs" / "index.md").read_text("utf-8")
    table = index[index.index("## The public surface") :]
    shown = set(re.findall(r"`([A-Za-z_]+)`", table))
    assert sorted(set(PUBLIC) - shown) == []


def test_the_client_shows_its_api_and_hides_its_plumbing() -> None:
    public = sorted(name for name in dir(AsyncNanoBanana) if not name.startswith("_"))
    assert public == CLIENT
    for plumbing in ("send_job", "policy_for", "ready"):
        assert not hasattr(AsyncNanoBanana, plumbing)


def test_telemetry_names_its_views_of_the_batch_types_its_own_way() -> None:
    # Telemetry reads a batch's options, stats and results through protocols (it sits below the
    # batch package); named like the public types, they were easy to import by mistake.
    from nanobanana_async.telemetry import batch, sink

    for module in (batch, sink):
        for name in ("BatchOptions", "BatchStats", "JobResult"):
            assert not hasattr(module, name), f"{module.__name__}.{name}"
