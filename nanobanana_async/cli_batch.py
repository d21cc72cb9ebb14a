"""``nanobanana batch``: estimate, confirm, run with a progress bar, gallery and summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Sequence

import attrs
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .batch import BatchReport, BatchRun, BatchStats, JobResult
from .cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ClientConfig,
    CLIError,
    console,
    estimate_table,
    label_of,
    load_jobs,
    make_dir,
    out,
    pricing_of,
    setup_logging,
)
from .errors import InvalidRequestError
from .gallery import GallerySummary, write_gallery
from .inputs import SourcedJob
from .journal import JobIds, Journal

__all__ = ["cmd_batch"]

MAX_FAILURES_SHOWN = 20


def _already_done(journal: pathlib.Path | None, jobs: Sequence[SourcedJob]) -> set[int]:
    """Indexes of the jobs an earlier run with this journal generated (the batch will not pay
    for them again). Ids are assigned exactly as the batch runner does."""
    if journal is None or not journal.exists():
        return set()
    try:
        opened = Journal(journal)
    except InvalidRequestError as exc:
        raise CLIError(exc.message) from None
    try:
        ids = JobIds()
        return {i for i, s in enumerate(jobs) if opened.resumable(ids.assign(s.job)) is not None}
    finally:
        opened.close()


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
    what = "emulated credits" if emulator else "credits"
    err.print(f"Spend up to [bold]{credits}[/] {what} on {jobs} jobs? {escape('[y/N]')} ", end="")
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} jobs/s", style="cyan")


@attrs.define
class _BatchState:
    results: list[JobResult] = attrs.Factory(list)
    run: BatchRun | None = None
    interrupted: bool = False

    def report(self) -> BatchReport | None:
        return self.run.report(self.results) if self.run is not None else None


class _BatchUI:
    """The progress bar and the lines printed above it while a batch runs."""

    def __init__(self, console: Console, jobs: Sequence[SourcedJob], done: int, label: str) -> None:
        self.console = console
        self.jobs = jobs
        self.label = label
        self.done = done
        self.failures_shown = 0
        self.stop_shown = False
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]✓ {task.fields[ok]}[/] [red]✗ {task.fields[failed]}[/] "
                "[yellow]↷ {task.fields[skipped]}[/] · {task.fields[credits]} credits"
            ),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            # Lines printed on stdout show above the bar only when both go to one terminal;
            # otherwise redirecting would send stdout's URLs to stderr.
            redirect_stdout=sys.stdout.isatty() and console.is_terminal,
            redirect_stderr=False,
        )
        self.task = self.progress.add_task(
            "batch", total=len(jobs), completed=done, ok=done, failed=0, skipped=0, credits=0
        )

    def update(self, result: JobResult, stats: BatchStats) -> None:
        self.progress.update(
            self.task,
            advance=0 if result.resumed else 1,
            # Jobs resumed from the journal were counted up front, as they were already done.
            ok=self.done + stats.succeeded - stats.resumed,
            failed=stats.failed,
            skipped=stats.skipped,
            credits=stats.credits_spent,
        )
        if stats.stopped_reason and not self.stop_shown:
            self.stop_shown = True
            self.console.print(Text(f"stopping: {stats.stopped_reason}", style="bold red"))
        if result.status == "failed":
            self._show_failure(result)

    def _show_failure(self, result: JobResult) -> None:
        if self.failures_shown > MAX_FAILURES_SHOWN:
            return
        self.failures_shown += 1
        if self.failures_shown > MAX_FAILURES_SHOWN:
            self.console.print("[dim]… more failures: see the summary and the journal[/]")
            return
        line = self.jobs[result.index].line
        text = Text(f"✗ {self.label}:{line}: ", style="red")
        text.append(str(result.error or result.reason or "failed"), style="default")
        self.console.print(text)


async def _run_batch(
    args: argparse.Namespace,
    config: ClientConfig,
    jobs: Sequence[SourcedJob],
    out_dir: pathlib.Path | None,
    journal: pathlib.Path | None,
    ui: _BatchUI,
    state: _BatchState,
) -> None:
    print_urls = out_dir is None and not args.json
    async with config.open() as client:
        run = client.batch(
            [s.job for s in jobs],
            concurrency=args.concurrency,
            max_credits=args.max_credits,
            max_per_second=args.max_per_second,
            journal=journal,
            download_dir=out_dir,
        )
        state.run = run
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
    pricing = pricing_of(args)
    jobs = load_jobs(args, pricing)
    config = ClientConfig.from_args(args, pricing)
    label = label_of(args.file)
    out_dir = pathlib.Path(args.output) if args.output else None
    journal = pathlib.Path(args.journal) if args.journal else None
    if journal is None and out_dir is not None:
        journal = out_dir / "journal.jsonl"
    err = console(stderr=True)
    setup_logging(args.verbose, err)

    done = _already_done(journal, jobs)
    todo = [s for i, s in enumerate(jobs) if i not in done]
    estimate = pricing.estimate(s.job for s in todo)
    if done:
        err.print(
            Text(f"{len(done)} of {len(jobs)} jobs already done in {journal}: not sent again.")
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
    if journal is not None and journal.parent != pathlib.Path():
        make_dir(str(journal.parent))

    state = _BatchState()
    ui = _BatchUI(err, jobs, len(done), label)
    try:
        with ui.progress:
            asyncio.run(_run_batch(args, config, jobs, out_dir, journal, ui, state))
    except KeyboardInterrupt:
        state.interrupted = True
    report = state.report()
    gallery = None
    if out_dir is not None and report is not None:
        summary = GallerySummary(
            source=label,
            total=len(jobs),
            succeeded=report.succeeded,
            failed=report.failed,
            skipped=report.skipped,
            credits_spent=report.credits_spent,
            elapsed=report.elapsed,
            note=(
                f"Interrupted: {report.total} of {len(jobs)} jobs finished. Run the same command "
                "again to resume."
                if state.interrupted
                else None
            ),
        )
        gallery = write_gallery(report.results, out_dir, summary)
    _print_summary(err, report, len(jobs), state.interrupted, gallery, journal)
    if state.interrupted:
        return EXIT_INTERRUPTED
    return (
        EXIT_OK if report is not None and report.total == len(jobs) and report.ok else EXIT_FAILED
    )


def _print_summary(
    err: Console,
    report: BatchReport | None,
    total: int,
    interrupted: bool,
    gallery: pathlib.Path | None,
    journal: pathlib.Path | None,
) -> None:
    table = Table(title="Summary", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    if report is not None:
        resumed = f" ({report.resumed} from an earlier run)" if report.resumed else ""
        table.add_row("succeeded", f"[green]{report.succeeded}[/]{resumed}")
        table.add_row("failed", f"[red]{report.failed}[/]" if report.failed else "0")
        table.add_row("skipped", f"[yellow]{report.skipped}[/]" if report.skipped else "0")
        if interrupted:
            table.add_row("not run", str(total - report.total))
        table.add_row(
            "credits", f"{report.credits_spent} spent (estimate {report.credits_estimated})"
        )
        timing = f"{report.elapsed:.1f} s"
        if report.latency_p50 is not None and report.latency_p95 is not None:
            timing += f" · latency p50 {report.latency_p50:.2f} s, p95 {report.latency_p95:.2f} s"
        table.add_row("time", timing)
        table.add_row("retries", str(report.retries))
        if report.stopped_reason:
            table.add_row("stopped", Text(report.stopped_reason, style="red"))
    if gallery is not None:
        table.add_row("gallery", Text(str(gallery)))
    if journal is not None:
        table.add_row("journal", Text(str(journal)))
    err.print(table)
    if interrupted:
        hint = (
            "run the same command again to resume"
            if journal is not None
            else "no journal was kept: use -o DIR or --journal FILE to make a batch resumable"
        )
        err.print(f"[bold yellow]Interrupted[/]: {hint}.")
    elif report is not None and not report.ok and journal is not None:
        err.print("Run the same command again to retry what did not succeed; done jobs are kept.")
