"""``nanobanana models`` and ``nanobanana estimate``: prices and estimates, nothing sent."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..models import DEFAULT_MODEL, sizes_for
from .common import (
    EXIT_OK,
    add_input,
    add_job_defaults,
    console,
    estimate_json,
    estimate_table,
    label_of,
    load_jobs,
    out,
    pricing_of,
)

__all__ = ["add_parsers", "cmd_estimate", "cmd_models"]


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``estimate`` and ``models`` to the subcommands."""
    est = sub.add_parser(
        "estimate",
        parents=[common],
        help="credits a job file would cost (sends nothing)",
        description="Add up the credits FILE would cost, by model. Sends no request.",
    )
    add_input(est)
    add_job_defaults(est, rows=True)
    est.add_argument("--json", action="store_true", help="print JSON")
    est.set_defaults(run=cmd_estimate)

    mod = sub.add_parser(
        "models",
        parents=[common],
        help="models, credits per image and sizes",
        description="List the models, their credits per image and the sizes each takes.",
    )
    mod.add_argument("--json", action="store_true", help="print JSON")
    mod.set_defaults(run=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    pricing = pricing_of(args)
    if args.json:
        rows = [
            {"model": m, "credits_per_image": c, "sizes": list(sizes_for(m))}
            for m, c in pricing.items()
        ]
        out(json.dumps(rows))
        return EXIT_OK
    from rich.markup import escape
    from rich.table import Table

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
        out(estimate_json(estimate))
        return EXIT_OK
    from rich.text import Text

    stdout = console(stderr=False)
    stdout.print(Text(f"Estimate for {label_of(args.file)}", style="bold"))
    stdout.print(estimate_table(estimate, jobs))
    stdout.print("No request was sent.", style="dim")
    return EXIT_OK
