"""One worker process on a job store: ``python -m benchmarks.store_worker URL BASE_URL KEY C``.

Waits for a line on stdin (so that every worker of a measurement starts together), runs
``run_worker(store, concurrency=C)`` until the store has no pending job, and prints one JSON
line: the jobs it ran and how many succeeded.
"""

from __future__ import annotations

import json
import sys

import anyio

from nanobanana_async import AsyncNanoBanana, open_store


async def _run(url: str, base_url: str, key: str, concurrency: int) -> dict[str, int]:
    async with AsyncNanoBanana(key, base_url=base_url, max_retries=0) as client:
        sys.stdin.readline()
        report = await client.run_worker(open_store(url), concurrency=concurrency)
    return {"jobs": len(report.results), "succeeded": report.succeeded}


def main(argv: list[str]) -> None:
    url, base_url, key, concurrency = argv[0], argv[1], argv[2], int(argv[3])
    print(json.dumps(anyio.run(_run, url, base_url, key, concurrency)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
