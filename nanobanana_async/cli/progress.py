"""What ``nanobanana batch`` shows while it runs and when it ends: progress bar, summary."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from rich.console import Console
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

from ..batch import BatchReport, BatchStats, JobResult
from .inputs import SourcedJob
from .metrics import RunRecorder, retries_line

__all__ = ["BatchUI", "print_summary"]

MAX_FAILURES_SHOWN = 20


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} jobs/s", style="cyan")


class BatchUI:
    """The progress bar and the lines printed above it while a batch runs."""

    def __init__(
        self,
        console: Console,
        jobs: Sequence[SourcedJob] | None,
        done: int,
        label: str,
        *,
        total: int | None = None,
    ) -> None:
        """``jobs`` of a file (failures name their line), or None and a ``total`` (a worker:
        failures name the job id; no total while it follows the store)."""
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
            label if jobs is None else "batch",
            total=len(jobs) if jobs is not None else total,
            completed=done,
            ok=done,
            failed=0,
            skipped=0,
            credits=0,
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
        where = (
            f"{self.label}:{self.jobs[result.index].line}"
            if self.jobs is not None
            else f"job {result.id}"
        )
        text = Text(f"✗ {where}: ", style="red")
        text.append(str(result.error or result.reason or "failed"), style="default")
        self.console.print(text)


def print_summary(
    err: Console,
    report: BatchReport | None,
    total: int,
    interrupted: str | None,
    gallery: os.PathLike[str] | None,
    journal: os.PathLike[str] | str | None,
    recorder: RunRecorder | None = None,
) -> None:
    """The summary after a run; ``interrupted`` says how it was stopped (``Interrupted``,
    ``Terminated (SIGTERM)``), None when it ran to its end."""
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
        credits = f"{report.credits_spent} spent (estimate {report.credits_estimated})"
        if report.credits_may_have_been_spent:
            # Answers lost after the request was sent: the server may have charged them.
            credits += f", {report.credits_may_have_been_spent} more may have been spent"
        table.add_row("credits", credits)
        if report.partial:
            table.add_row("partial", f"[yellow]{report.partial}[/] answered with fewer images")
        timing = f"{report.elapsed:.1f} s"
        if report.latency_p50 is not None and report.latency_p95 is not None:
            timing += f" · latency p50 {report.latency_p50:.2f} s, p95 {report.latency_p95:.2f} s"
        table.add_row("time", timing)
        table.add_row("retries", retries_line(report, recorder))
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
        err.print(Text.assemble((interrupted, "bold yellow"), f": {hint}."))
    elif report is not None and not report.ok and journal is not None:
        err.print("Run the same command again to retry what did not succeed; done jobs are kept.")
