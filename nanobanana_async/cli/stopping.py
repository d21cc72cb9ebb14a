"""How ``batch`` and ``worker`` stop on SIGINT and SIGTERM, and the exit status they then give.

Containers and services are stopped with SIGTERM (then SIGKILL after a timeout), people press
Ctrl-C: either way the command stops taking jobs, lets the ones in flight finish for
``--grace`` seconds, and still writes its summary, metrics and gallery. The logic is the
SDK's (:func:`nanobanana_async.batch.stop_on_signals`); this module keeps what the command
needs to say afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Final

import attrs

from .exits import EXIT_INTERRUPTED, EXIT_TERMINATED

if TYPE_CHECKING:
    from ..batch import GracefulStop

__all__ = ["DEFAULT_GRACE", "Stop", "add_grace"]

# The SDK's DEFAULT_GRACE (tests/cli/test_cli_signals.py checks they agree): not imported, so
# that building the parser loads neither anyio nor the batch runner.
DEFAULT_GRACE: Final = 8.0


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def add_grace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace",
        type=_grace,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, the seconds the requests in flight get to finish before "
        f"they are cancelled ({DEFAULT_GRACE:g}; keep it below your orchestrator's kill "
        "timeout: Docker 10 s, Kubernetes 30 s, systemd 90 s by default)",
    )


@attrs.define
class Stop:
    """What stopped a command's run, if anything: a signal, or a KeyboardInterrupt that came
    while signals were not being handled."""

    stopping: GracefulStop | None = None
    interrupted: bool = False
    late: signal.Signals | None = None  # came while the summary and files were written

    @contextlib.asynccontextmanager
    async def signals(self, grace: float) -> AsyncIterator[GracefulStop]:
        """SIGINT and SIGTERM stop the runs watched, for the block."""
        from ..batch import stop_on_signals

        async with stop_on_signals(grace) as stopping:
            self.stopping = stopping
            yield stopping

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """While the summary, metrics and gallery are written, SIGINT and SIGTERM are noted
        (for the exit status) instead of cutting the files short; a second one acts at once.
        """
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.getsignal(signum) for signum in handled}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        def note(signum: int, _frame: object) -> None:
            if self.late is None:
                self.late = signal.Signals(signum)
                return
            restore()
            signal.raise_signal(signum)

        for signum in handled:
            signal.signal(signum, note)
        try:
            yield
        finally:
            restore()

    @property
    def signal(self) -> signal.Signals | None:
        received = self.stopping.signal if self.stopping is not None else None
        return received or self.late

    @property
    def signal_name(self) -> str | None:
        received = self.signal
        if received is not None:
            return received.name
        return "SIGINT" if self.interrupted else None

    @property
    def stopped(self) -> bool:
        return self.interrupted or self.signal is not None

    @property
    def label(self) -> str:
        """``Interrupted`` (Ctrl-C) or ``Terminated (SIGTERM)``."""
        if self.signal is signal.SIGTERM:
            return "Terminated (SIGTERM)"
        return "Interrupted"

    @property
    def exit_status(self) -> int:
        """128 + the signal: 130 for SIGINT, 143 for SIGTERM, as a shell reports them."""
        return EXIT_TERMINATED if self.signal is signal.SIGTERM else EXIT_INTERRUPTED
