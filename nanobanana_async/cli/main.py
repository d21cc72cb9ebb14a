"""The ``nanobanana`` parser and entry point: one subcommand per module, errors as one line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import AuthenticationError, InvalidRequestError, NanoBananaError
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, PROG, CLIError
from .inputs import InputError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``nanobanana`` argument parser (built without rich: help and usage errors need none)."""
    from . import (
        cmd_batch,
        cmd_demo,
        cmd_emulator,
        cmd_generate,
        cmd_info,
        cmd_jobs,
        cmd_limits,
        cmd_worker,
    )
    from .common import add_common

    common = argparse.ArgumentParser(add_help=False)
    add_common(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate images with the Nano Banana API, one prompt or thousands.",
        epilog="Try it offline: nanobanana demo (then open nanobanana-demo/index.html)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd_generate.add_parser(sub, common)
    cmd_batch.add_parser(sub, common)
    cmd_demo.add_parser(sub, common)
    cmd_info.add_parsers(sub, common)
    cmd_jobs.add_parser(sub, common)
    cmd_worker.add_parser(sub, common)
    cmd_emulator.add_parser(sub, common)
    cmd_limits.add_parser(sub, common)
    return parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        import rich  # noqa: F401  (every command draws its output with it)
    except ModuleNotFoundError:
        return _fail(
            f"{PROG} {args.command} draws its output with rich, which is not installed: "
            "pip install 'nanobanana-async[cli]'",
            EXIT_USAGE,
        )
    try:
        return int(args.run(args))
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
