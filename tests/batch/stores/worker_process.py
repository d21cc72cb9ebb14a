"""A store worker in its own process, for the kill tests: ``python -m
tests.batch.stores.worker_process STORE_URL BASE_URL BACKEND CONCURRENCY [RETRIES]``.

The API key comes from ``NANOBANANA_API_KEY``. ``RETRIES``: retry up to that many times,
lost answers included (``retry_ambiguous``). Prints the worker's counts when it ends.
"""

from __future__ import annotations

import sys

import anyio

from nanobanana_async import AsyncNanoBanana


async def work(store: str, base_url: str, concurrency: int, retries: int | None) -> None:
    async with AsyncNanoBanana(base_url=base_url) as client:
        report = await client.run_worker(
            store,
            concurrency=concurrency,
            max_retries=retries,
            retry_ambiguous=True if retries is not None else None,
        )
    print(report.succeeded, report.failed, report.skipped, flush=True)


if __name__ == "__main__":
    url, base, backend, concurrency = sys.argv[1:5]
    retries = int(sys.argv[5]) if len(sys.argv) > 5 else None
    anyio.run(work, url, base, int(concurrency), retries, backend=backend)
