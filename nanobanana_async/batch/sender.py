"""The one thing the batch runner needs of a client: send a job, fetch an image."""

from __future__ import annotations

import os
import pathlib
from typing import Protocol

from ..limits import Limits
from ..models import Generation, Job
from ..pricing import PricingTable
from ..retry import AttemptHooks, CallStats, RetryPolicy

__all__ = ["JobSender"]


class JobSender(Protocol):
    """What a batch sends its jobs through; each client hands its batches one (an adapter over
    its private plumbing).

    The runner depends on this protocol, never on the client class, so the client imports the
    batch package and not the other way round.
    """

    @property
    def pricing(self) -> PricingTable:
        """The pricing table jobs are validated and priced with."""
        ...

    @property
    def limits(self) -> Limits:
        """The limits every attempt of the sender is admitted by (a batch layers its own caps
        over them)."""
        ...

    def policy(self, max_retries: int | None, retry_ambiguous: bool | None) -> RetryPolicy:
        """The sender's retry policy with these overrides applied."""
        ...

    async def ready(self) -> None:
        """Raise if no job could be sent now (the sender's shared limits unreachable or
        refusing): asked once before the first job."""
        ...

    async def send(
        self,
        job: Job,
        policy: RetryPolicy,
        stats: CallStats,
        hooks: AttemptHooks | None = None,
        *,
        idempotency_key: str | None = None,
        limits: Limits | None = None,
    ) -> Generation:
        """Generate ``job`` under ``policy``, counting attempts in ``stats`` and calling
        ``hooks`` around each attempt. ``idempotency_key`` (a job store's, kept across runs)
        is sent on every attempt; None makes a fresh one for this call. ``limits`` admit and
        settle each attempt instead of the sender's own (a batch's caps layered over them)."""
        ...

    async def download(self, url: str, path: str | os.PathLike[str]) -> pathlib.Path:
        """Save the image at ``url`` to ``path``."""
        ...
