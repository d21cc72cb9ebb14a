"""Peak RSS of a lazy batch recorded in a SQLite job store:
``python -m benchmarks.store_memory N DB`` (run it twice on one DB: the second run resumes).

Run in its own process so that the peak RSS is this batch's. Prints one JSON line: the jobs,
how many succeeded and were resumed, the generate requests sent, the RSS after imports and
the peak, in MiB.
"""

from __future__ import annotations

import json
import sys

import anyio
import httpx

from nanobanana_async import AsyncNanoBanana

from .clients import jobs
from .memory import _rss_mib

_OK = b'{"code":0,"message":"ok","data":{"url":"https://img.example/1.png"}}'


async def _run(n: int, db: str, concurrency: int) -> dict[str, int]:
    sent = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return httpx.Response(200, content=_OK, headers={"content-type": "application/json"})

    succeeded = resumed = 0
    async with (
        AsyncNanoBanana(
            "nb-bench-0123456789abcdef",
            base_url="http://127.0.0.1:1",
            transport=httpx.MockTransport(handler),
        ) as client,
        client.batch(jobs(n), concurrency=concurrency, journal=f"sqlite:///{db}") as run,
    ):
        async for result in run:
            succeeded += result.ok
            resumed += result.resumed
    return {"succeeded": succeeded, "resumed": resumed, "sent": sent}


def main(argv: list[str]) -> None:
    n, db = int(argv[0]), argv[1]
    concurrency = int(argv[2]) if len(argv) > 2 else 64
    before = _rss_mib()
    counts = anyio.run(_run, n, db, concurrency)
    print(json.dumps({"jobs": n, **counts, "rss_start": before, "rss_peak": _rss_mib()}))


if __name__ == "__main__":
    main(sys.argv[1:])
