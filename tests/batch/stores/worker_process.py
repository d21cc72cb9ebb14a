"""A store worker in its own process, for the kill test: ``python -m
tests.batch.stores.worker_process STORE_URL BASE_URL BACKEND CONCURRENCY``.

The API key comes from ``NANOBANANA_API_KEY``. Prints the worker's counts when it ends.
"""

from __future__ import annotations

import sys

import anyio

from nanobanana_async import AsyncNanoBanana


async def work(store: str, base_url: str, concurrency: int) -> None:
    async with AsyncNanoBanana(base_url=base_url) as client:
        report = await client.run_worker(store, concurrency=concurrency)
    print(report.succeeded, report.failed, report.skipped, flush=True)


if __name__ == "__main__":
    url, base, backend, concurrency = sys.argv[1:5]
    anyio.run(work, url, base, int(concurrency), backend=backend)
