"""What every ``nanobanana`` command shares: exit codes, argument types, consoles, the client.

Commands import this module; it imports none of them, so nothing imports back up. Building the
parser needs only the argument types here: rich, httpx, the client and the job stores are
imported by the helpers that use them, so ``nanobanana --help`` (and a usage error) loads
none of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..models import DEFAULT_MODEL
from ..pricing import CreditEstimate, PricingTable, resolve_pricing
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, CLIError
from .inputs import FORMATS, SourcedJob, read_jobs

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ..batch.stores import SqlStore
    from ..client import AsyncNanoBanana
    from ..telemetry import Hooks

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CLIError",
    "ClientConfig",
    "add_common",
    "add_input",
    "add_job_defaults",
    "add_limits",
    "add_store",
    "console",
    "credits",
    "estimate_json",
    "estimate_table",
    "label_of",
    "limits_from",
    "load_jobs",
    "make_dir",
    "open_sql_store",
    "out",
    "positive_float",
    "positive_int",
    "pricing_of",
    "rate",
    "setup_logging",
]

# The in-process emulator is reached through its transport, never a socket; a loopback URL
# keeps the client's plain-http guard satisfied.
EMULATOR_BASE_URL = "http://127.0.0.1:9"
EMULATOR_KEY = "emulator-key"


# -- argument types ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def credits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_common(parser: argparse.ArgumentParser, *, default: Any) -> None:
    # The same options on the main parser and on every subcommand, so they may go before or
    # after the subcommand; SUPPRESS in subcommands keeps a value given before it.
    parser.add_argument(
        "--api-key",
        default=default,
        help="API key (default: $NANOBANANA_API_KEY; the environment keeps it out of ps)",
    )
    parser.add_argument(
        "--base-url", default=default, help="API base URL (default: $NANOBANANA_BASE_URL)"
    )
    parser.add_argument(
        "--pricing",
        metavar="FILE",
        default=default,
        help='JSON file {"model": credits per image} adding to or overriding the built-in prices',
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="log requests and retries to stderr (-vv for debug)",
    )


def add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limits",
        metavar="URL",
        help="share the rate, credit budget and 429 cool-down with every process using URL, "
        "e.g. redis://host:6379/0?namespace=acct&max_per_second=20&max_credits=5000 "
        "(default: $NANOBANANA_LIMITS; needs the redis extra)",
    )


def limits_from(args: argparse.Namespace, **overrides: Any) -> Any:
    """The RedisLimits of ``--limits`` / ``$NANOBANANA_LIMITS`` (``overrides`` replacing
    options of the URL), or None (limits of this process). Imported only when asked for."""
    url = getattr(args, "limits", None) or os.environ.get("NANOBANANA_LIMITS")
    if not url:
        return None
    from ..limits.redis import RedisLimits

    return RedisLimits.from_url(url, **overrides)


def add_job_defaults(parser: argparse.ArgumentParser, *, rows: bool) -> None:
    what = "for rows that name none" if rows else ""
    parser.add_argument("--model", "-m", help=f"model {what} (default: {DEFAULT_MODEL})")
    parser.add_argument("--size", "-s", help=f"image size (aspect ratio) {what} (default: 1:1)")


def add_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE",
        help="jobs: .txt (a prompt a line), .jsonl (job objects) or .csv (header row); - for stdin",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="format of FILE when its extension does not say (default: from the name, else "
        "jsonl if the first line is a JSON object, else txt)",
    )


def add_store(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("NANOBANANA_STORE")
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        required=default is None,
        help="job store: sqlite:///jobs.db (one machine) or postgresql://user@host/db "
        "(workers on many machines); default $NANOBANANA_STORE",
    )


# -- shared helpers --------------------------------------------------------------------------


def console(*, stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def pricing_of(args: argparse.Namespace) -> PricingTable:
    return resolve_pricing(args.pricing)


def setup_logging(verbose: int | None, sink: Console) -> None:
    from rich.logging import RichHandler

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose or 0, logging.DEBUG)
    handler = RichHandler(console=sink, show_path=False, markup=False, rich_tracebacks=False)
    logger = logging.getLogger("nanobanana_async")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


@attrs.frozen
class ClientConfig:
    """How to reach the API; opened only once there is something to send."""

    api_key: str
    base_url: str | None
    emulator: bool
    pricing: PricingTable
    timeout: float | None
    limits: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, pricing: PricingTable) -> ClientConfig:
        key = args.api_key or os.environ.get("NANOBANANA_API_KEY") or ""
        limits = limits_from(args)
        if args.emulator:
            if args.base_url:
                raise CLIError("--emulator runs in-process: it cannot be combined with --base-url")
            return cls(key or EMULATOR_KEY, EMULATOR_BASE_URL, True, pricing, args.timeout, limits)
        if not key.strip():
            raise CLIError(
                "no API key: set NANOBANANA_API_KEY (or pass --api-key), "
                "or add --emulator to try it offline"
            )
        return cls(key, args.base_url, False, pricing, args.timeout, limits)

    def open(self, *, hooks: Hooks | None = None) -> AsyncNanoBanana:
        import httpx

        from ..client import DEFAULT_TIMEOUT, AsyncNanoBanana

        transport = None
        if self.emulator:
            from ..emulator import Emulator

            transport = Emulator().transport()
        timeout = DEFAULT_TIMEOUT
        if self.timeout is not None:
            timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect, read=self.timeout, write=30, pool=None)
        return AsyncNanoBanana(
            self.api_key,
            base_url=self.base_url,
            transport=transport,
            pricing=self.pricing,
            timeout=timeout,
            hooks=hooks,
            limits=self.limits,
        )


def load_jobs(args: argparse.Namespace, pricing: PricingTable) -> list[SourcedJob]:
    return read_jobs(
        args.file, known_models=pricing, model=args.model, size=args.size, fmt=args.format
    )


def estimate_table(estimate: CreditEstimate, jobs: Sequence[SourcedJob]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    counts: dict[str, list[int]] = {}
    for sourced in jobs:
        entry = counts.setdefault(sourced.job.model, [0, 0])
        entry[0] += 1
        entry[1] += sourced.job.num
    table = Table(show_footer=True)
    table.add_column("model", footer="total")
    table.add_column("jobs", justify="right", footer=str(estimate.jobs))
    table.add_column("images", justify="right", footer=str(estimate.images))
    table.add_column("credits", justify="right", footer=str(estimate.total))
    for model, credits in sorted(estimate.by_model.items()):
        jobs_n, images = counts.get(model, [0, 0])
        table.add_row(escape(model), str(jobs_n), str(images), str(credits))
    return table


def estimate_json(estimate: CreditEstimate) -> str:
    return json.dumps(
        {
            "total": estimate.total,
            "by_model": dict(estimate.by_model),
            "jobs": estimate.jobs,
            "images": estimate.images,
        }
    )


def out(text: str) -> None:
    print(text, flush=True)


def label_of(path: str) -> str:
    return "<stdin>" if path == "-" else path


def open_sql_store(url: str, *, existing: bool = False) -> SqlStore:
    """The SQLite or Postgres store ``--store`` names (a JSONL journal has no job rows).

    ``existing``: the command only reads or changes jobs already there, so a SQLite file
    that does not exist, or a database without a job store, is refused rather than created
    empty (a typo in the path would otherwise report an empty store and succeed).
    """
    from ..batch.stores import SqliteStore, SqlStore, open_store

    store = open_store(url)
    if not isinstance(store, SqlStore):
        raise CLIError(
            f"--store {url}: a store is sqlite:///path or postgresql://... "
            "(a JSONL journal is only for nanobanana batch --journal)"
        )
    if existing:
        store.create = False
    if existing and isinstance(store, SqliteStore) and not pathlib.Path(store.path).is_file():
        raise CLIError(
            f"--store {url}: no job store at {store.path} (nothing was created): check the "
            "path, or add jobs to a new store with nanobanana jobs add FILE --store URL"
        )
    return store


def make_dir(path: str) -> pathlib.Path:
    target = pathlib.Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    return target
