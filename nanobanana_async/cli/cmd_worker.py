"""``nanobanana worker --store URL``: run a store's pending jobs, with the progress bar.

Start one per machine (or several): they share the store's jobs without sending one twice.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import TYPE_CHECKING, Any

import attrs

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    ClientConfig,
    add_limits,
    add_store,
    console,
    credits,
    make_dir,
    open_sql_store,
    positive_float,
    positive_int,
    pricing_of,
    setup_logging,
)
from .exits import EXIT_STOPPED
from .stopping import Stop, add_grace

if TYPE_CHECKING:
    from ..batch import BatchRun, JobResult
    from ..batch.stores import SqlStore
    from .progress import BatchUI

__all__ = ["add_parser", "cmd_worker"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``worker`` to the subcommands."""
    worker = sub.add_parser(
        "worker",
        parents=[common],
        help="run the pending jobs of a job store (one worker per machine, or more)",
        description="Claim pending jobs from the store a few at a time, run them and record "
        "each result there, until none is pending (--follow: keep polling for new ones). "
        "Workers anywhere that reach the store share its jobs; a worker killed mid-run costs "
        "at most the jobs it was sending, which the store keeps as ambiguous. SIGTERM or "
        "Ctrl-C stops claiming, lets the jobs in flight finish for --grace seconds and gives "
        "back the rest. Exit status: 0 all of this worker's jobs succeeded, 1 some failed or "
        "were skipped, 3 stopped because the credits ran out (--max-credits, the --limits' "
        "max_credits, or the account's): the jobs it could not pay for stay pending, 130 "
        "interrupted (SIGINT), 143 terminated (SIGTERM).",
    )
    add_store(worker)
    worker.add_argument(
        "-c", "--concurrency", type=positive_int, default=8, help="requests in flight (8)"
    )
    worker.add_argument(
        "--max-credits", type=credits, metavar="N", help="this worker commits at most N credits"
    )
    worker.add_argument(
        "--max-per-second", type=positive_float, metavar="R", help="at most R request starts/s"
    )
    worker.add_argument("-o", "--output", metavar="DIR", help="download images into DIR")
    worker.add_argument(
        "--follow", action="store_true", help="keep polling for new jobs instead of ending"
    )
    worker.add_argument(
        "--poll", type=positive_float, default=1.0, metavar="S", help="seconds between polls (1)"
    )
    worker.add_argument(
        "--emulator", action="store_true", help="use the built-in emulator (no key needed)"
    )
    worker.add_argument("--timeout", type=positive_float, help="read timeout in seconds")
    # Shared limits across workers (rate, budget, cool-down), through ClientConfig.
    add_limits(worker)
    add_grace(worker)
    worker.set_defaults(run=cmd_worker)


@attrs.define
class _WorkerState:
    results: list[JobResult] = attrs.Factory(list)
    run: BatchRun | None = None
    stop: Stop = attrs.Factory(Stop)


async def _work(
    args: argparse.Namespace,
    config: ClientConfig,
    store: SqlStore,
    out_dir: pathlib.Path | None,
    ui: BatchUI,
    state: _WorkerState,
) -> None:
    async with state.stop.signals(args.grace) as stopping, config.open() as client:
        run = client.worker(
            store,
            concurrency=args.concurrency,
            max_credits=args.max_credits,
            max_per_second=args.max_per_second,
            download_dir=out_dir,
            follow=args.follow,
            poll_interval=args.poll,
        )
        state.run = stopping.watch(run)
        async with run:
            async for result in run:
                state.results.append(result)
                ui.update(result, run.stats)


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    from .progress import BatchUI, print_summary

    pricing = pricing_of(args)
    config = ClientConfig.from_args(args, pricing)
    store = open_sql_store(args.store)
    out_dir = make_dir(args.output) if args.output else None
    err = console(stderr=True)
    setup_logging(args.verbose, err)
    status = asyncio.run(store.status())
    pending = status.counts.get("pending", 0)
    err.print(Text(f"{pending} job(s) pending in {store.url}.", style="bold"))
    ui = BatchUI(err, None, 0, "worker", total=None if args.follow else pending)
    state = _WorkerState()
    try:
        with ui.progress:
            asyncio.run(_work(args, config, store, out_dir, ui, state))
    except KeyboardInterrupt:  # before the signals were handled, or after
        state.stop.interrupted = True
    stop = state.stop
    report = state.run.report(state.results) if state.run is not None else None
    label = stop.label if stop.stopped else None
    with stop.deferred():  # a signal now must not cut the summary short
        print_summary(err, report, len(report.results) if report else 0, label, None, store.url)
        after = asyncio.run(store.status())
        left = ", ".join(f"{n} {s}" for s, n in after.counts.items() if n and s != "done")
        done = after.counts.get("done", 0)
        err.print(Text(f"Store: {done} done" + (f", {left}" if left else "")))
    if stop.stopped:
        return stop.exit_status
    if report is not None and report.stop_cause in ("budget", "insufficient_credits"):
        return EXIT_STOPPED
    return EXIT_OK if report is not None and report.ok else EXIT_FAILED
