"""``nanobanana emulator``: serve the API emulator on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from .common import EXIT_OK, CLIError, console, credits, out, rate

__all__ = ["add_parser", "cmd_emulator"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``emulator`` to the subcommands."""
    emu = sub.add_parser(
        "emulator",
        parents=[common],
        help="serve the API emulator on this machine (extra: emulator)",
        description="Serve the Nano Banana API emulator until Ctrl-C. Prints its base URL on "
        "stdout; point the SDK or this CLI at it with --base-url and any key.",
    )
    emu.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    emu.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    emu.add_argument("--credits", type=credits, help="credits each new key starts with")
    emu.add_argument(
        "--fail-rate", type=rate, default=0.0, help="share of requests that get a 5xx (0-1)"
    )
    emu.add_argument("--rate-limit-rate", type=rate, default=0.0, help="share that get a 429 (0-1)")
    emu.add_argument(
        "--latency", metavar="S", help="seconds per generation: fixed (0.2) or a range (0.1-0.5)"
    )
    emu.add_argument(
        "--drop-rate", type=rate, default=0.0, help="share whose connection is dropped (0-1)"
    )
    emu.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="share (0-1) of generate requests meeting a fault, repeatable (e.g. gzip=0.1, "
        "truncated_success=0.05, charge_on_hangup=0.5; see docs/testing.md)",
    )
    emu.add_argument("--seed", type=int, default=0, help="seed of fault and latency draws (0)")
    emu.set_defaults(run=cmd_emulator)


def cmd_emulator(args: argparse.Namespace) -> int:
    from rich.text import Text

    try:
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        raise CLIError(
            "serving the emulator needs uvicorn: pip install 'nanobanana-async[emulator]' "
            "(batch and generate take --emulator without it)"
        ) from None
    from ..emulator import Emulator, Faults, parse_latency, serve, with_fault_options

    try:
        faults = Faults(
            server_error_rate=args.fail_rate,
            rate_limit_rate=args.rate_limit_rate,
            drop_rate=args.drop_rate,
            latency=parse_latency(args.latency) if args.latency else 0.0,
        )
        faults = with_fault_options(faults, args.fault)
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
