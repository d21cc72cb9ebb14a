"""The one thing the batch runner needs of a client: send a job, fetch an image."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..models import Generation, Job
from ..pricing import PricingTable
from ..retry import CallStats, RetryPolicy

__all__ = ["BeforeAttempt", "JobSender"]

#: Awaited before every attempt of a job (rate limit, stop check); raising skips the attempt.
BeforeAttempt = Callable[[], Awaitable[None]]


class JobSender(Protocol):
    """What a batch sends its jobs through; :class:`~nanobanana_async.AsyncNanoBanana` is one.

    The runner depends on this protocol, never on the client class, so the client imports the
    batch package and not the other way round.
    """

    @property
    def pricing(self) -> PricingTable:
        """The pricing table jobs are validated and priced with."""
        ...

    def policy_for(self, max_retries: int | None, retry_ambiguous: bool | None) -> RetryPolicy:
        """The sender's retry policy with these overrides applied."""
        ...

    async def send_job(
        self,
        job: Job,
        policy: RetryPolicy,
        stats: CallStats,
        before_attempt: BeforeAttempt | None = None,
    ) -> Generation:
        """Generate ``job`` under ``policy``, counting attempts in ``stats``."""
        ...

    async def download(self, url: str, path: str | os.PathLike[str]) -> pathlib.Path:
        """Save the image at ``url`` to ``path``."""
        ...
