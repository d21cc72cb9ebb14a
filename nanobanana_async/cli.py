"""The ``nanobanana`` command line: generate, batch, estimate, models, emulator.

Output contract: what a script consumes (image URLs, JSON) goes to standard output; progress,
estimates, prompts and summaries go to standard error. Exit status: 0 when every job
succeeded, 1 when some failed or were skipped (or the user declined), 2 for usage and input
errors, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import re
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import httpx

from . import __version__
from .batch import safe_filename
from .client import DEFAULT_TIMEOUT, AsyncNanoBanana
from .errors import AuthenticationError, InvalidRequestError, NanoBananaError
from .inputs import FORMATS, InputError, SourcedJob, build_job, read_jobs
from .models import DEFAULT_MODEL, sizes_for
from .pricing import CreditEstimate, PricingTable, resolve_pricing

_MISSING_RICH: ModuleNotFoundError | None = None
try:
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text
except ModuleNotFoundError as exc:  # pragma: no cover - only without the "cli" extra
    _MISSING_RICH = exc

__all__ = ["main"]

PROG = "nanobanana"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The in-process emulator is reached through its transport, never a socket; a loopback URL
# keeps the client's plain-http guard satisfied.
EMULATOR_BASE_URL = "http://127.0.0.1:9"
EMULATOR_KEY = "emulator-key"


class CLIError(Exception):
    """A user-facing failure: one line on stderr and an exit status, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing ----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _credits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, default: Any) -> None:
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


def _add_job_defaults(parser: argparse.ArgumentParser, *, rows: bool) -> None:
    what = "for rows that name none" if rows else ""
    parser.add_argument("--model", "-m", help=f"model {what} (default: {DEFAULT_MODEL})")
    parser.add_argument("--size", "-s", help=f"image size (aspect ratio) {what} (default: 1:1)")


def _add_input(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate images with the Nano Banana API, one prompt or thousands.",
        epilog="Try it offline: nanobanana batch examples/prompts.txt --emulator -o out --yes",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="generate images for one prompt",
        description="Generate images for one prompt; prints the URLs on stdout.",
    )
    gen.add_argument("prompt", metavar="PROMPT", help="the prompt (- reads it from stdin)")
    _add_job_defaults(gen, rows=False)
    gen.add_argument("-n", "--num", type=_positive_int, default=1, help="images (default: 1)")
    gen.add_argument("-o", "--output", metavar="DIR", help="download the images into DIR")
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    gen.add_argument(
        "--emulator", action="store_true", help="use the built-in emulator (no key needed)"
    )
    gen.add_argument("--timeout", type=_positive_float, help="read timeout in seconds")

    bat = sub.add_parser(
        "batch",
        parents=[common],
        help="run every job of a file, with progress, budget and resume",
        description="Run every job of FILE. Prints the credit estimate and asks before spending "
        "unless --yes or --max-credits. With -o DIR, images, the journal and an index.html "
        "gallery go to DIR, and running the same command again resumes. Exit status: 0 all "
        "succeeded, 1 some failed or were skipped, 2 usage or input error, 130 interrupted.",
    )
    _add_input(bat)
    _add_job_defaults(bat, rows=True)
    bat.add_argument(
        "-c", "--concurrency", type=_positive_int, default=8, help="requests in flight (8)"
    )
    bat.add_argument(
        "--max-credits", type=_credits, metavar="N", help="never commit more than N credits"
    )
    bat.add_argument(
        "--max-per-second", type=_positive_float, metavar="R", help="at most R request starts/s"
    )
    bat.add_argument(
        "-o", "--output", metavar="DIR", help="save images, journal and index.html gallery in DIR"
    )
    bat.add_argument(
        "--journal",
        metavar="FILE",
        help="JSONL journal to resume from (default: DIR/journal.jsonl)",
    )
    bat.add_argument("-y", "--yes", action="store_true", help="do not ask before spending")
    bat.add_argument(
        "--json", action="store_true", help="print each finished job as a JSON line on stdout"
    )
    bat.add_argument(
        "--emulator", action="store_true", help="use the built-in emulator (no key needed)"
    )
    bat.add_argument("--timeout", type=_positive_float, help="read timeout in seconds")

    est = sub.add_parser(
        "estimate",
        parents=[common],
        help="credits a job file would cost (sends nothing)",
        description="Add up the credits FILE would cost, by model. Sends no request.",
    )
    _add_input(est)
    _add_job_defaults(est, rows=True)
    est.add_argument("--json", action="store_true", help="print JSON")

    mod = sub.add_parser(
        "models",
        parents=[common],
        help="models, credits per image and sizes",
        description="List the models, their credits per image and the sizes each takes.",
    )
    mod.add_argument("--json", action="store_true", help="print JSON")

    emu = sub.add_parser(
        "emulator",
        parents=[common],
        help="serve the API emulator on this machine (extra: emulator)",
        description="Serve the Nano Banana API emulator until Ctrl-C. Prints its base URL on "
        "stdout; point the SDK or this CLI at it with --base-url and any key.",
    )
    emu.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    emu.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    emu.add_argument("--credits", type=_credits, help="credits each new key starts with")
    emu.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="share of requests that get a 5xx (0-1)"
    )
    emu.add_argument(
        "--rate-limit-rate", type=_rate, default=0.0, help="share that get a 429 (0-1)"
    )
    emu.add_argument(
        "--latency", metavar="S", help="seconds per generation: fixed (0.2) or a range (0.1-0.5)"
    )
    emu.add_argument(
        "--drop-rate", type=_rate, default=0.0, help="share whose connection is dropped (0-1)"
    )
    emu.add_argument("--seed", type=int, default=0, help="seed of fault and latency draws (0)")
    return parser


# -- shared helpers --------------------------------------------------------------------------


def console(*, stderr: bool) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def pricing_of(args: argparse.Namespace) -> PricingTable:
    return resolve_pricing(args.pricing)


def setup_logging(verbose: int | None, sink: Console) -> None:
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

    @classmethod
    def from_args(cls, args: argparse.Namespace, pricing: PricingTable) -> ClientConfig:
        key = args.api_key or os.environ.get("NANOBANANA_API_KEY") or ""
        if args.emulator:
            if args.base_url:
                raise CLIError("--emulator runs in-process: it cannot be combined with --base-url")
            return cls(key or EMULATOR_KEY, EMULATOR_BASE_URL, True, pricing, args.timeout)
        if not key.strip():
            raise CLIError(
                "no API key: set NANOBANANA_API_KEY (or pass --api-key), "
                "or add --emulator to try it offline"
            )
        return cls(key, args.base_url, False, pricing, args.timeout)

    def open(self) -> AsyncNanoBanana:
        transport = None
        if self.emulator:
            from .emulator import Emulator

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
        )


def load_jobs(args: argparse.Namespace, pricing: PricingTable) -> list[SourcedJob]:
    return read_jobs(
        args.file, known_models=pricing, model=args.model, size=args.size, fmt=args.format
    )


def estimate_table(estimate: CreditEstimate, jobs: Sequence[SourcedJob]) -> Table:
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


def _estimate_json(estimate: CreditEstimate) -> str:
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


# -- models, estimate ----------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    pricing = pricing_of(args)
    if args.json:
        rows = [
            {"model": m, "credits_per_image": c, "sizes": list(sizes_for(m))}
            for m, c in pricing.items()
        ]
        out(json.dumps(rows))
        return EXIT_OK
    table = Table(title="Models (credits per image)", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("credits", justify="right")
    table.add_column("sizes", overflow="fold")
    for model, credits in pricing.items():
        name = f"{model} (default)" if model == DEFAULT_MODEL else model
        table.add_row(escape(name), str(credits), " ".join(sizes_for(model)))
    console(stderr=False).print(table)
    return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    pricing = pricing_of(args)
    jobs = load_jobs(args, pricing)
    estimate = pricing.estimate(s.job for s in jobs)
    if args.json:
        out(_estimate_json(estimate))
        return EXIT_OK
    stdout = console(stderr=False)
    stdout.print(Text(f"Estimate for {label_of(args.file)}", style="bold"))
    stdout.print(estimate_table(estimate, jobs))
    stdout.print("No request was sent.", style="dim")
    return EXIT_OK


def label_of(path: str) -> str:
    return "<stdin>" if path == "-" else path


# -- generate ------------------------------------------------------------------------------

_SLUG = re.compile(r"[^a-z0-9]+")


def _slug(prompt: str) -> str:
    return _SLUG.sub("-", prompt.lower())[:40].strip("-") or "image"


def cmd_generate(args: argparse.Namespace) -> int:
    pricing = pricing_of(args)
    prompt = sys.stdin.read().strip() if args.prompt == "-" else args.prompt
    try:
        job = build_job(
            prompt, args.model or DEFAULT_MODEL, args.size or "1:1", args.num, None, pricing
        )
    except InvalidRequestError as exc:
        raise CLIError(exc.message) from None
    config = ClientConfig.from_args(args, pricing)
    out_dir = make_dir(args.output) if args.output else None
    err = console(stderr=True)
    setup_logging(args.verbose, err)

    async def run() -> tuple[Any, list[pathlib.Path]]:
        async with config.open() as client:
            with err.status("generating…"):
                generation = await client.generate(job)
                paths: list[pathlib.Path] = []
                if out_dir is not None:
                    stem = f"{_slug(job.prompt)}-{uuid.uuid4().hex[:6]}"
                    for i, url in enumerate(generation.urls):
                        name = safe_filename(stem, i, len(generation.urls), url)
                        paths.append(await client.download(url, out_dir / name))
            return generation, paths

    generation, paths = asyncio.run(run())
    if args.json:
        out(
            json.dumps(
                {
                    "urls": list(generation.urls),
                    "paths": [str(p) for p in paths],
                    "model": generation.model,
                    "image_size": generation.image_size,
                    "num": generation.num,
                    "credits": generation.credits,
                    "elapsed": round(generation.elapsed, 3),
                }
            )
        )
    else:
        for url in generation.urls:
            out(url)
    images = "image" if generation.num == 1 else "images"
    err.print(
        f"{generation.num} {images} · {escape(generation.model)} · {generation.image_size} · "
        f"[bold]{generation.credits} credits[/] · {generation.elapsed:.1f} s"
        + (" (emulator)" if config.emulator else "")
    )
    for path in paths:
        err.print(Text(f"saved {path}"))
    if config.emulator and not paths:
        # The in-process emulator's image URLs die with this process.
        err.print("add -o DIR to keep the images: emulator URLs stop working when this exits")
    return EXIT_OK


def make_dir(path: str) -> pathlib.Path:
    target = pathlib.Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    return target


# -- emulator ------------------------------------------------------------------------------


def cmd_emulator(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        raise CLIError(
            "serving the emulator needs uvicorn: pip install 'nanobanana-async[emulator]' "
            "(batch and generate take --emulator without it)"
        ) from None
    from .emulator import Emulator, Faults, parse_latency, serve

    try:
        faults = Faults(
            server_error_rate=args.fail_rate,
            rate_limit_rate=args.rate_limit_rate,
            drop_rate=args.drop_rate,
            latency=parse_latency(args.latency) if args.latency else 0.0,
        )
    except ValueError as exc:
        raise CLIError(f"emulator: {exc}") from None
    options: dict[str, Any] = {"faults": faults, "seed": args.seed}
    if args.credits is not None:
        options["default_credits"] = args.credits
    emulator = Emulator(**options)
    err = console(stderr=True)
    stop = threading.Event()
    # Stop on SIGTERM as on Ctrl-C, so a supervisor or a test can end it cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with serve(emulator, args.host, args.port) as server:
            url = server.base_url
            out(url)
            err.print(
                Text(
                    f"Emulator listening on {url} (any API key works). Try:\n"
                    f"  NANOBANANA_BASE_URL={url} NANOBANANA_API_KEY=test "
                    "nanobanana generate 'a red fox'\n"
                    f"Counters: {url}/_emulator/stats. Ctrl-C stops it."
                )
            )
            while not stop.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise CLIError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    err.print("Emulator stopped.")
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------


def cmd_batch(args: argparse.Namespace) -> int:
    # Imported here: cli_batch builds on this module's helpers.
    from .cli_batch import cmd_batch as run

    return run(args)


_COMMANDS = {
    "generate": cmd_generate,
    "batch": cmd_batch,
    "estimate": cmd_estimate,
    "models": cmd_models,
    "emulator": cmd_emulator,
}


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    if _MISSING_RICH is not None:
        return _fail("the command line needs rich: pip install 'nanobanana-async[cli]'", EXIT_USAGE)
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except CLIError as exc:
        return _fail(str(exc), exc.code)
    except InputError as exc:
        sys.stderr.write("".join(f"{PROG}: error: {line}\n" for line in exc.lines()))
        return EXIT_USAGE
    except InvalidRequestError as exc:
        return _fail(exc.message, EXIT_USAGE)
    except AuthenticationError as exc:
        return _fail(f"{exc}: check NANOBANANA_API_KEY or --api-key", EXIT_FAILED)
    except NanoBananaError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (| head): not an error worth a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:
        # A full disk or an unwritable file mid-run: the message is what the user can act on.
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", EXIT_FAILED)
