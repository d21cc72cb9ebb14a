"""``python -m nanobanana_async.emulator``: serve the emulator from a shell until Ctrl-C."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from .app import Emulator
from .faults import FAULT_RATES, Faults, parse_fault, parse_latency, with_fault_options
from .server import serve

__all__ = ["build_parser", "main"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _latency_arg(text: str) -> float | tuple[float, float]:
    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fault_arg(text: str) -> str:
    try:
        parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m nanobanana_async.emulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m nanobanana_async.emulator",
        description="Serve the Nano Banana API emulator until Ctrl-C. Prints its base URL on "
        "one line once it is listening; any API key is accepted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    parser.add_argument(
        "--credits",
        type=_non_negative_int,
        default=1_000_000,
        help="credits each API key starts with (1000000)",
    )
    parser.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="share of generate requests given a 5xx"
    )
    parser.add_argument(
        "--rate-limit-rate", type=_rate, default=0.0, help="share given a 429 with Retry-After"
    )
    parser.add_argument(
        "--drop-rate", type=_rate, default=0.0, help="share whose connection is dropped"
    )
    parser.add_argument(
        "--latency",
        type=_latency_arg,
        default=0.0,
        metavar="S",
        help="seconds per generate request: fixed (0.1) or a range (0.05-0.2)",
    )
    parser.add_argument(
        "--fault",
        type=_fault_arg,
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="share (0-1) of generate requests meeting a fault, repeatable; NAME is one of "
        + ", ".join(name.removesuffix("_rate") for name in FAULT_RATES),
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault and latency draws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            server_error_rate=args.fail_rate,
            rate_limit_rate=args.rate_limit_rate,
            drop_rate=args.drop_rate,
            latency=args.latency,
        )
        faults = with_fault_options(faults, args.fault)
    except ValueError as exc:
        parser.error(str(exc))
    emulator = Emulator(default_credits=args.credits, faults=faults, seed=args.seed)
    stop = threading.Event()
    previous: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with serve(emulator, args.host, args.port) as server:
            print(server.base_url, flush=True)
            while not stop.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
