"""The clients tests build: one builder, so every test module means the same by "a client of
the emulator"."""

from __future__ import annotations

from typing import Any

import httpx

from nanobanana_async import AsyncNanoBanana, RetryPolicy
from nanobanana_async.emulator import Emulator

__all__ = ["FAST", "TEST_BASE_URL", "emulated"]

# Retries back off in milliseconds: tests count retries, they do not wait for them.
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
TEST_BASE_URL = "https://api.test"


def emulated(
    emulator: Emulator,
    key: str,
    *,
    base_url: str = TEST_BASE_URL,
    transport: httpx.AsyncBaseTransport | None = None,
    **kwargs: Any,
) -> AsyncNanoBanana:
    """A client of ``emulator`` in process (or through ``transport``, a wrapper around it),
    retrying on :data:`FAST` unless ``retry_policy`` says otherwise."""
    kwargs.setdefault("retry_policy", FAST)
    return AsyncNanoBanana(
        key, base_url=base_url, transport=transport or emulator.transport(), **kwargs
    )
