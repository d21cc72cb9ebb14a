"""The batch runner: many jobs, bounded concurrency, budget, rate, journal and downloads.

``runner`` (producer, workers, ordering) drives ``process`` (one job: budget, rate, send,
downloads) through the :class:`~nanobanana_async.batch.sender.JobSender` protocol, so nothing
here imports the client. ``run`` is the async iterator users hold; ``results`` the types they
get back; ``shutdown`` stops batches gracefully (SIGTERM, SIGINT, or code asking).
"""

from .options import BatchKWs, BatchOptions, JobInput, WorkerKWs, options_from
from .owner import BatchRegistry
from .results import BatchReport, BatchStats, JobResult
from .run import BatchRun, run_to_report
from .sender import JobSender
from .shutdown import DEFAULT_GRACE, GracefulStop, stop_on_signals
from .stores import JobStore

__all__ = [
    "DEFAULT_GRACE",
    "BatchKWs",
    "BatchOptions",
    "BatchRegistry",
    "BatchReport",
    "BatchRun",
    "BatchStats",
    "GracefulStop",
    "JobInput",
    "JobResult",
    "JobSender",
    "JobStore",
    "WorkerKWs",
    "options_from",
    "run_to_report",
    "stop_on_signals",
]
