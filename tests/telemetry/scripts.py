"""Faults by attempt number, set on the emulator by a ``before_attempt`` hook."""

from __future__ import annotations

from collections.abc import Mapping

from nanobanana_async import AttemptEvent, Hooks
from nanobanana_async.emulator import Emulator, Faults

SERVER_ERROR = Faults(server_error_rate=1.0, html_error_share=0.0)  # JSON 500
RATE_LIMITED = Faults(rate_limit_rate=1.0, retry_after=0.01)  # 429, Retry-After 10 ms
DROPPED_AFTER_CHARGE = Faults(drop_rate=1.0, drop_after_charge_share=1.0)


def scripted(emulator: Emulator, script: Mapping[int, Faults]) -> Hooks:
    """Hooks that give attempt number N of a call the faults ``script[N]`` (none otherwise).

    For one call at a time: concurrent calls would change each other's faults.
    """

    def before_attempt(event: AttemptEvent) -> None:
        emulator.faults = script.get(event.attempt, Faults())

    return Hooks(before_attempt=before_attempt)
