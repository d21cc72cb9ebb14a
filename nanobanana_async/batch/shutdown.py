"""Stopping batches and workers gracefully: on SIGTERM and SIGINT, or when code asks.

Docker, Kubernetes and systemd stop a process with SIGTERM, then kill it (SIGKILL) after
their own timeout: 10 s by default in Docker, 30 s in Kubernetes, 90 s in systemd. A batch
killed outright loses the summary of what it paid for; one that stops taking jobs and lets
the requests in flight finish keeps everything. :class:`GracefulStop` does that to the
batches it watches: the first request stops them with a grace period (:meth:`BatchRun.stop`),
a second one cancels what is still in flight at once. :func:`stop_on_signals` makes SIGTERM
and SIGINT such requests for the duration of a block, on asyncio and Trio alike.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterable
from typing import Final

import anyio

from ..validation import seconds
from .run import BatchRun
from .runner import single_error

__all__ = ["DEFAULT_GRACE", "GracefulStop", "stop_on_signals"]

logger = logging.getLogger("nanobanana_async")

DEFAULT_GRACE: Final = 8.0
"""Seconds the requests in flight get to finish after a stop: below Docker's 10 s default, so
the summary and files are written before the container is killed."""

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Stops the batches it watches when asked: first with ``grace`` seconds for the jobs in
    flight, the second time at once.

    :meth:`request` is what a signal does (:func:`stop_on_signals` calls it); call it from
    your own code or tests the same way. ``signal`` is the first signal received (None when
    stopped from code, or not stopped), ``requests`` how many stops were asked for.
    """

    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        self.grace = float(seconds(grace, "grace", infinite=True))
        self.signal: signal.Signals | None = None
        self.requests = 0
        self._runs: list[BatchRun] = []

    @property
    def reason(self) -> str:
        """What a stopped batch gives as its ``stopped_reason``."""
        what = self.signal.name if self.signal is not None else "stop requested"
        return (
            f"{what}: stopped taking jobs; jobs in flight had {self.grace:g} s to finish "
            "(run again to resume)"
        )

    def watch(self, run: BatchRun) -> BatchRun:
        """Stop ``run`` on the next request (at once if one came already); returns it."""
        self._runs.append(run)
        if self.requests:
            self._stop(run)
        return run

    def request(self, signum: int | None = None) -> None:
        """Stop every batch watched: the first time with the grace period, then at once."""
        self.requests += 1
        if signum is not None and self.signal is None:
            self.signal = signal.Signals(signum)
        if self.requests == 1:
            logger.warning(
                "%s: stopping; jobs in flight have %g s to finish (again to stop at once)",
                self.signal.name if self.signal is not None else "stop requested",
                self.grace,
            )
        for run in self._runs:
            self._stop(run)

    def _stop(self, run: BatchRun) -> None:
        run.stop(self.reason, grace=self.grace if self.requests == 1 else 0.0)


@contextlib.asynccontextmanager
async def stop_on_signals(
    grace: float = DEFAULT_GRACE, *, signals: Iterable[int] = _SIGNALS
) -> AsyncIterator[GracefulStop]:
    """For the block, ``signals`` (SIGINT and SIGTERM) stop the batches the yielded
    :class:`GracefulStop` watches instead of ending the process::

        async with stop_on_signals(grace=20) as stopping:
            run = stopping.watch(client.worker("sqlite:///jobs.db"))
            async with run:
                async for result in run:
                    ...
        # stopping.signal: signal.SIGTERM if that is what ended it

    Afterwards the signals' handling is back to the default. Needs the main thread.
    """
    stopping = GracefulStop(grace)
    # The block's own error comes out as itself: the forwarding task never fails.
    signums = [signal.Signals(s) for s in signals]
    with anyio.open_signal_receiver(*signums) as received, single_error():
        async with anyio.create_task_group() as tg:

            async def forward() -> None:
                async for signum in received:
                    stopping.request(signum)

            tg.start_soon(forward)
            try:
                yield stopping
            finally:
                tg.cancel_scope.cancel()
