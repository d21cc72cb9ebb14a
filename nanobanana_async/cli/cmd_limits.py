"""``nanobanana limits``: the shared limits of a namespace (rate, credits, cool-down); reset."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .common import EXIT_FAILED, EXIT_OK, CLIError, add_limits, console, limits_from, out

if TYPE_CHECKING:
    from rich.table import Table

    from ..limits import LimitsStatus

__all__ = ["add_parser", "cmd_limits"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``limits`` to the subcommands."""
    lim = sub.add_parser(
        "limits",
        parents=[common],
        help="show (or reset) the limits shared through --limits URL",
        description="Show the rate, the credits spent, may have been spent, reserved and left, "
        "and any 429 cool-down of the limits at URL (--limits or $NANOBANANA_LIMITS). "
        "'reset' starts a new credit ledger (the caps stay), after a confirmation.",
    )
    lim.add_argument(
        "action", nargs="?", choices=("show", "reset"), default="show", help="(default: show)"
    )
    add_limits(lim)
    lim.add_argument("--json", action="store_true", help="print JSON")
    lim.add_argument("-y", "--yes", action="store_true", help="reset without asking")
    lim.set_defaults(run=cmd_limits)


def _describe(status: LimitsStatus) -> dict[str, Any]:
    return {
        "max_per_second": status.max_per_second,
        "max_credits": status.max_credits,
        "spent": status.spent,
        "may_have_been_spent": status.uncertain,
        "reserved": status.reserved,
        "left": status.left,
        "in_flight": status.in_flight,
        "cooldown_seconds": round(status.cooldown, 3),
    }


def _table(status: LimitsStatus, where: str) -> Table:
    from rich.table import Table

    table = Table(title=where, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rate = "none" if status.max_per_second is None else f"{status.max_per_second:g} starts/s"
    table.add_row("rate cap", rate)
    cap = "none" if status.max_credits is None else str(status.max_credits)
    table.add_row("max credits", cap)
    table.add_row("spent", str(status.spent))
    table.add_row("may have been spent", str(status.uncertain))
    table.add_row("reserved (in flight)", f"{status.reserved} ({status.in_flight} attempts)")
    table.add_row("left", "n/a" if status.left is None else str(status.left))
    cooldown = "none" if status.cooldown <= 0 else f"{status.cooldown:.1f} s left"
    table.add_row("429 cool-down", cooldown)
    return table


def _confirm(args: argparse.Namespace, status: LimitsStatus, where: str) -> bool:
    from rich.markup import escape

    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise CLIError(
            "refusing to reset the shared limits without confirmation (standard input is not "
            "a terminal): pass --yes"
        )
    err = console(stderr=True)
    err.print(
        f"Reset the credit ledger of {escape(where)}? {status.spent} spent, "
        f"{status.uncertain} may have been spent and {status.reserved} reserved go back to 0; "
        f"{status.in_flight} attempt(s) in flight stop being counted. {escape('[y/N]')} ",
        end="",
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_limits(args: argparse.Namespace) -> int:
    import asyncio

    from rich.markup import escape

    limits = limits_from(args)
    if limits is None:
        raise CLIError("no limits to show: pass --limits redis://... or set NANOBANANA_LIMITS")
    where = f"{limits.url}, namespace {limits.namespace!r}"

    async def status() -> LimitsStatus:
        async with limits:
            result: LimitsStatus = await limits.status()
            return result

    async def reset() -> int:
        async with limits:
            outstanding: int = await limits.reset()
            return outstanding

    current = asyncio.run(status())
    if args.action == "reset":
        if not _confirm(args, current, where):
            console(stderr=True).print("Cancelled: nothing was reset.")
            return EXIT_FAILED
        outstanding = asyncio.run(reset())
        if args.json:
            out(json.dumps({"reset": True, "outstanding_reservations": outstanding}))
        else:
            console(stderr=True).print(
                f"Reset {escape(where)}: a new credit ledger ({outstanding} reservation(s) in "
                "flight were dropped)."
            )
        return EXIT_OK
    if args.json:
        out(json.dumps({"url": limits.url, "namespace": limits.namespace, **_describe(current)}))
    else:
        console(stderr=False).print(_table(current, f"Limits at {where}"))
    return EXIT_OK
