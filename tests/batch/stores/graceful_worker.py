"""A store worker in its own process that SIGTERM stops gracefully: ``python -m
tests.batch.stores.graceful_worker STORE_URL BASE_URL BACKEND``.

``run_worker`` inside the SDK's ``stop_on_signals``, as a worker in a container would run it.
The API key comes from ``NANOBANANA_API_KEY``. Prints its report as JSON and exits 143 when a
SIGTERM stopped it (128 + the signal, as a shell reports it).
"""

from __future__ import annotations

import json
import sys

import anyio

from nanobanana_async import AsyncNanoBanana
from nanobanana_async.batch import stop_on_signals


async def work(store: str, base_url: str) -> int:
    async with stop_on_signals(grace=60) as stopping, AsyncNanoBanana(base_url=base_url) as api:
        run = stopping.watch(api.worker(store, concurrency=4))
        async with run:
            results = [result async for result in run]
        report = run.report(results)
    received = stopping.signal
    print(
        json.dumps(
            {
                "signal": received.name if received is not None else None,
                "stop_cause": report.stop_cause,
                "succeeded": report.succeeded,
                "credits_spent": report.credits_spent,
            }
        ),
        flush=True,
    )
    return 128 + received if received is not None else 0


if __name__ == "__main__":
    url, base, backend = sys.argv[1:4]
    sys.exit(anyio.run(work, url, base, backend=backend))
