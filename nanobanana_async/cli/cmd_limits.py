"""``nanobanana limits``: the shared limits of a namespace (rate, credits, cool-down, ledger);
``create`` its credit ledger, ``reset`` it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    add_limits,
    console,
    credits,
    limits_from,
    out,
    positive_float,
)

if TYPE_CHECKING:
    from rich.table import Table

    from ..limits import LimitsStatus, RedisLimits

__all__ = ["add_parser", "cmd_limits"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``limits`` to the subcommands."""
    lim = sub.add_parser(
        "limits",
        parents=[common],
        help="show, create or reset the limits shared through --limits URL",
        description="Show the rate, the credits spent, may have been spent, reserved and left, "
        "the ledger and any 429 cool-down of the limits at URL (--limits or "
        "$NANOBANANA_LIMITS), beside the caps the URL asks for. 'create' makes the namespace's "
        "credit ledger (once: a shared budget needs one, and a ledger Redis lost is never made "
        "again by itself); 'reset' starts it again (the caps stay), after a confirmation.",
    )
    lim.add_argument(
        "action",
        nargs="?",
        choices=("show", "create", "reset"),
        default="show",
        help="(default: show)",
    )
    add_limits(lim)
    lim.add_argument(
        "--max-credits",
        type=credits,
        metavar="N",
        help="create: the ledger's budget (default: max_credits of the URL)",
    )
    lim.add_argument(
        "--max-per-second",
        type=positive_float,
        metavar="R",
        help="create: the namespace's rate (default: max_per_second of the URL)",
    )
    lim.add_argument(
        "--replace",
        action="store_true",
        help="create: replace a ledger that exists (what it says was spent is forgotten)",
    )
    lim.add_argument("--json", action="store_true", help="print JSON")
    lim.add_argument("-y", "--yes", action="store_true", help="reset or replace without asking")
    lim.set_defaults(run=cmd_limits)


def _describe(status: LimitsStatus, limits: RedisLimits) -> dict[str, Any]:
    return {
        "max_per_second": status.max_per_second,
        "max_credits": status.max_credits,
        "ledger": status.ledger,
        "spent": status.spent,
        "may_have_been_spent": status.uncertain,
        "reserved": status.reserved,
        "left": status.left,
        "in_flight": status.in_flight,
        "cooldown_seconds": round(status.cooldown, 3),
        # What the URL asks for: processes started with it use these.
        "asked": {"max_per_second": limits.max_per_second, "max_credits": limits.max_credits},
    }


def _cap(value: float | None, unit: str = "") -> str:
    return "none" if value is None else f"{value:g}{unit}"


def _table(status: LimitsStatus, limits: RedisLimits, where: str) -> Table:
    from rich.table import Table

    table = Table(title=where, title_justify="left")
    table.add_column("")
    table.add_column("in Redis", justify="right")
    table.add_column("this URL asks", justify="right")
    table.add_row(
        "rate cap",
        _cap(status.max_per_second, " starts/s"),
        _cap(limits.max_per_second, " starts/s"),
    )
    ledger = "none" if status.ledger is None else f"{status.max_credits} (ledger {status.ledger})"
    table.add_row("max credits", ledger, _cap(limits.max_credits))
    table.add_row("spent", str(status.spent), "")
    table.add_row("may have been spent", str(status.uncertain), "")
    table.add_row("reserved (in flight)", f"{status.reserved} ({status.in_flight} attempts)", "")
    table.add_row("left", "n/a" if status.left is None else str(status.left), "")
    cooldown = "none" if status.cooldown <= 0 else f"{status.cooldown:.1f} s left"
    table.add_row("429 cool-down", cooldown, "")
    return table


def _confirm(args: argparse.Namespace, question: str) -> bool:
    from rich.markup import escape

    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise CLIError(
            f"refusing to {args.action} the shared credit ledger without confirmation "
            "(standard input is not a terminal): pass --yes"
        )
    console(stderr=True).print(f"{escape(question)} {escape('[y/N]')} ", end="")
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _dropped(status: LimitsStatus, where: str) -> str:
    return (
        f"Replace the credit ledger of {where}? {status.spent} spent, {status.uncertain} may "
        f"have been spent and {status.reserved} reserved go back to 0; {status.in_flight} "
        "attempt(s) in flight stop being counted, and processes using it refuse to go on "
        "until started again."
    )


def _overridden(args: argparse.Namespace) -> Any:
    """The limits of the URL, with ``create``'s --max-credits / --max-per-second over it."""
    caps = {"max_credits": args.max_credits, "max_per_second": args.max_per_second}
    given = {name: value for name, value in caps.items() if value is not None}
    if given and args.action != "create":
        raise CLIError("--max-credits and --max-per-second go with 'create'")
    return limits_from(args, **given)


def _create(args: argparse.Namespace, limits: RedisLimits, current: LimitsStatus) -> int:
    import asyncio

    from rich.markup import escape

    where = f"{limits.url}, namespace {limits.namespace!r}"
    if limits.max_credits is None:
        raise CLIError("a credit ledger needs a budget: pass --max-credits N")
    replacing = args.replace and current.ledger is not None
    if replacing and not _confirm(args, _dropped(current, where)):
        console(stderr=True).print("Cancelled: nothing was changed.")
        return EXIT_FAILED
    ledger = asyncio.run(limits.create(replace=args.replace))
    if args.json:
        out(json.dumps({"created": True, "ledger": ledger, "max_credits": limits.max_credits}))
    else:
        console(stderr=True).print(
            f"Created the credit ledger {ledger} of {escape(where)}: max_credits "
            f"{limits.max_credits}."
        )
    return EXIT_OK


def _reset(args: argparse.Namespace, limits: RedisLimits, current: LimitsStatus) -> int:
    import asyncio

    from rich.markup import escape

    where = f"{limits.url}, namespace {limits.namespace!r}"
    if not _confirm(args, _dropped(current, where)):
        console(stderr=True).print("Cancelled: nothing was reset.")
        return EXIT_FAILED
    outstanding = asyncio.run(limits.reset())
    if args.json:
        out(json.dumps({"reset": True, "outstanding_reservations": outstanding}))
    else:
        console(stderr=True).print(
            f"Reset {escape(where)}: a new credit ledger ({outstanding} reservation(s) in "
            "flight were dropped)."
        )
    return EXIT_OK


def cmd_limits(args: argparse.Namespace) -> int:
    import asyncio

    limits = _overridden(args)
    if limits is None:
        raise CLIError("no limits to show: pass --limits redis://... or set NANOBANANA_LIMITS")
    # Read without opening the limits: opening refuses what this command is for (a budget
    # whose ledger is missing), and a view needs no connection kept.
    current = asyncio.run(limits.status())
    if args.action == "create":
        return _create(args, limits, current)
    if args.action == "reset":
        return _reset(args, limits, current)
    if args.json:
        described = _describe(current, limits)
        out(json.dumps({"url": limits.url, "namespace": limits.namespace, **described}))
    else:
        where = f"{limits.url}, namespace {limits.namespace!r}"
        console(stderr=False).print(_table(current, limits, f"Limits at {where}"))
    return EXIT_OK
