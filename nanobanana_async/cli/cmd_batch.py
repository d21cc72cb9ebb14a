"""``nanobanana batch``: estimate, confirm, run with a progress bar, gallery and summary."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import InvalidRequestError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    ClientConfig,
    CLIError,
    add_input,
    add_job_defaults,
    add_limits,
    console,
    credits,
    estimate_table,
    label_of,
    load_jobs,
    make_dir,
    out,
    positive_float,
    positive_int,
    pricing_of,
    setup_logging,
)
from .inputs import SourcedJob
from .metrics import RunRecorder
from .stopping import Stop, add_grace

if TYPE_CHECKING:
    from rich.console import Console

    from ..batch import BatchReport, BatchRun, JobResult
    from ..batch.stores import JobStore
    from .progress import BatchUI

# rich, asyncio, the client and the batch runner are imported when a batch runs, not when the
# parser is built (``nanobanana --help``).

__all__ = ["add_parser", "cmd_batch"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``batch`` to the subcommands."""
    bat = sub.add_parser(
        "batch",
        parents=[common],
        help="run every job of a file, with progress, budget and resume",
        description="Run every job of FILE. Prints the credit estimate and asks before spending "
        "unless --yes or --max-credits. With -o DIR, images, the journal (DIR/journal.db) and "
        "an index.html gallery go to DIR, and running the same command again resumes. SIGINT "
        "(Ctrl-C) or SIGTERM stops taking jobs, lets the ones in flight finish for --grace "
        "seconds, and still writes the summary, gallery and metrics; a second one stops at "
        "once. Exit status: 0 all succeeded, 1 some failed or were skipped, 2 usage or input "
        "error, 130 interrupted (SIGINT), 143 terminated (SIGTERM).",
    )
    add_input(bat)
    add_job_defaults(bat, rows=True)
    bat.add_argument(
        "-c", "--concurrency", type=positive_int, default=8, help="requests in flight (8)"
    )
    bat.add_argument(
        "--max-credits", type=credits, metavar="N", help="never commit more than N credits"
    )
    bat.add_argument(
        "--max-per-second", type=positive_float, metavar="R", help="at most R request starts/s"
    )
    bat.add_argument(
        "-o", "--output", metavar="DIR", help="save images, journal and index.html gallery in DIR"
    )
    bat.add_argument(
        "--journal",
        metavar="FILE|URL",
        help="where jobs are recorded and resumed from: a job store, sqlite:///run.db (the "
        "default, DIR/journal.db with -o: flat memory at millions of jobs, and a kill leaves "
        "the jobs in flight as ambiguous instead of paying for them again), or a JSONL file "
        "(run.jsonl: one line per job; a kill may pay for the jobs in flight again)",
    )
    bat.add_argument("-y", "--yes", action="store_true", help="do not ask before spending")
    bat.add_argument(
        "--json", action="store_true", help="print each finished job as a JSON line on stdout"
    )
    bat.add_argument(
        "--emulator", action="store_true", help="use the built-in emulator (no key needed)"
    )
    bat.add_argument("--timeout", type=positive_float, help="read timeout in seconds")
    bat.add_argument(
        "--metrics-json",
        metavar="FILE",
        help="write the run's figures as JSON to FILE: the summary's, plus request outcomes, "
        "latency percentiles and retries by reason",
    )
    add_limits(bat)
    add_grace(bat)

    bat.set_defaults(run=cmd_batch)


def _already_done(journal: JobStore | None, jobs: Sequence[SourcedJob]) -> set[int]:
    """Indexes of the jobs an earlier run with this journal generated (the batch will not pay
    for them again). Ids are assigned exactly as the batch runner does."""
    where = getattr(journal, "path", None)
    if journal is None or (where is not None and not pathlib.Path(where).exists()):
        return set()
    import asyncio

    from ..batch.journal import JobIds

    ids = JobIds()
    assigned = [ids.assign(s.job) for s in jobs]
    try:
        done = asyncio.run(journal.generated(assigned))
    except InvalidRequestError as exc:
        raise CLIError(exc.message) from None
    return {i for i, job_id in enumerate(assigned) if job_id in done}


def _journal(given: str | None, out_dir: pathlib.Path | None, err: Console) -> JobStore | None:
    """The store ``--journal`` names; with ``-o DIR`` and none named, ``DIR/journal.db``.

    A ``DIR/journal.jsonl`` left by an earlier version (which journaled there) is resumed from
    as it is, never paid for again: the run says so.
    """
    from ..batch.stores import JsonlStore, SqliteStore, open_store

    if given:
        return open_store(given)
    if out_dir is None:
        return None
    legacy = out_dir / "journal.jsonl"
    store = SqliteStore(out_dir / "journal.db")
    if legacy.exists() and not pathlib.Path(store.path).exists():
        from rich.text import Text

        err.print(Text(f"Resuming from {legacy} (an earlier run's JSONL journal)."))
        return JsonlStore(legacy)
    return store


def _confirm(
    args: argparse.Namespace, credits: int, jobs: int, emulator: bool, err: Console
) -> bool:
    if args.yes or args.max_credits is not None or credits == 0:
        return True
    if args.file == "-" or not sys.stdin.isatty():
        raise CLIError(
            f"refusing to spend {credits} credits without confirmation (standard input is not a "
            "terminal): pass --yes, or --max-credits N to cap the spend"
        )
    from rich.markup import escape

    what = "emulated credits" if emulator else "credits"
    err.print(f"Spend up to [bold]{credits}[/] {what} on {jobs} jobs? {escape('[y/N]')} ", end="")
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


@attrs.define
class _BatchState:
    results: list[JobResult] = attrs.Factory(list)
    run: BatchRun | None = None
    stop: Stop = attrs.Factory(Stop)
    recorder: RunRecorder = attrs.Factory(RunRecorder)

    def report(self) -> BatchReport | None:
        return self.run.report(self.results) if self.run is not None else None


async def _run_batch(
    args: argparse.Namespace,
    config: ClientConfig,
    jobs: Sequence[SourcedJob],
    out_dir: pathlib.Path | None,
    journal: JobStore | None,
    ui: BatchUI,
    state: _BatchState,
) -> None:
    print_urls = out_dir is None and not args.json
    async with (
        state.stop.signals(args.grace) as stopping,
        config.open(hooks=state.recorder.hooks()) as client,
    ):
        run = client.batch(
            [s.job for s in jobs],
            concurrency=args.concurrency,
            max_credits=args.max_credits,
            max_per_second=args.max_per_second,
            journal=journal,
            download_dir=out_dir,
        )
        state.run = stopping.watch(run)
        async with run:
            async for result in run:
                state.results.append(result)
                ui.update(result, run.stats)
                if args.json:
                    record = result.to_record()
                    record["line"] = jobs[result.index].line
                    out(json.dumps(record, ensure_ascii=False))
                elif print_urls and result.generation is not None:
                    for url in result.generation.urls:
                        out(url)


def cmd_batch(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    from .progress import BatchUI

    pricing = pricing_of(args)
    jobs = load_jobs(args, pricing)
    config = ClientConfig.from_args(args, pricing)
    label = label_of(args.file)
    out_dir = pathlib.Path(args.output) if args.output else None
    err = console(stderr=True)
    journal = _journal(args.journal, out_dir, err)
    setup_logging(args.verbose, err)

    done = _already_done(journal, jobs)
    todo = [s for i, s in enumerate(jobs) if i not in done]
    estimate = pricing.estimate(s.job for s in todo)
    if done:
        err.print(
            Text(
                f"{len(done)} of {len(jobs)} jobs already done in "
                f"{journal.url if journal else ''}: not sent again."
            )
        )
    if todo:
        emulated = " (emulator: no real credits)" if config.emulator else ""
        err.print(Text(f"Estimate for {label}{emulated}", style="bold"))
        err.print(estimate_table(estimate, todo))
    if args.max_credits is not None and args.max_credits < estimate.total:
        err.print(
            f"[yellow]--max-credits {args.max_credits} is below the estimate: jobs that do not "
            "fit will be skipped.[/]"
        )
    if not _confirm(args, estimate.total, len(todo), config.emulator, err):
        err.print("Cancelled: nothing was sent.")
        return EXIT_FAILED
    if out_dir is not None:
        make_dir(str(out_dir))
    where = getattr(journal, "path", None)
    if where is not None and pathlib.Path(where).parent != pathlib.Path():
        make_dir(str(pathlib.Path(where).parent))

    state = _BatchState()
    ui = BatchUI(err, jobs, len(done), label)
    try:
        with ui.progress:
            asyncio.run(_run_batch(args, config, jobs, out_dir, journal, ui, state))
    except KeyboardInterrupt:  # before the signals were handled, or after
        state.stop.interrupted = True
    report = state.report()
    with state.stop.deferred():  # a signal now must not cut the files short
        _write_outputs(args, state, report, len(jobs), label, out_dir, journal, config, err)
    if state.stop.stopped:
        return state.stop.exit_status
    return (
        EXIT_OK if report is not None and report.total == len(jobs) and report.ok else EXIT_FAILED
    )


def _write_outputs(
    args: argparse.Namespace,
    state: _BatchState,
    report: BatchReport | None,
    total: int,
    label: str,
    out_dir: pathlib.Path | None,
    journal: JobStore | None,
    config: ClientConfig,
    err: Console,
) -> None:
    """The gallery, the summary and ``--metrics-json``, interrupted or not."""
    from .gallery import GallerySummary, write_gallery
    from .metrics import metrics_document, write_metrics_json
    from .progress import print_summary

    # Read once: a signal noted while the files are written changes only the exit status.
    stopped = state.stop.label if state.stop.stopped else None
    signal_name = state.stop.signal_name
    gallery = None
    if out_dir is not None and report is not None:
        summary = GallerySummary(
            source=label,
            total=total,
            succeeded=report.succeeded,
            failed=report.failed,
            skipped=report.skipped,
            credits_spent=report.credits_spent,
            elapsed=report.elapsed,
            note=(
                f"{stopped}: {report.total} of {total} jobs finished. Run the same command "
                "again to resume."
                if stopped
                else None
            ),
        )
        gallery = write_gallery(report.results, out_dir, summary)
    print_summary(
        err,
        report,
        total,
        stopped,
        gallery,
        journal.url if journal else None,
        state.recorder,
    )
    if args.metrics_json and report is not None:
        document = metrics_document(
            report,
            state.recorder,
            source=label,
            jobs=total,
            interrupted=stopped is not None,
            emulator=config.emulator,
            signal=signal_name,
        )
        write_metrics_json(pathlib.Path(args.metrics_json), document)
