"""Peak RSS of a lazy batch through an in-process transport: ``python -m benchmarks.memory N``.

Run in its own process so that ``ru_maxrss`` is this batch's peak and nothing else's. Prints
one JSON line: the jobs run, the RSS after imports and the peak, in MiB.
"""

from __future__ import annotations

import json
import resource
import sys

import anyio
import httpx

from nanobanana_async import AsyncNanoBanana

from .clients import jobs

_OK = b'{"code":0,"message":"ok","data":{"url":"https://img.example/1.png"}}'


def trivial_transport() -> httpx.MockTransport:
    """Answers every request at once with a canned success: measures the client alone."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_OK, headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _run(n: int, concurrency: int) -> int:
    done = 0
    async with (
        AsyncNanoBanana(
            "nb-bench-0123456789abcdef",
            base_url="http://127.0.0.1:1",
            transport=trivial_transport(),
        ) as client,
        client.batch(jobs(n), concurrency=concurrency) as run,
    ):
        async for result in run:
            done += result.ok
    return done


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 1_000_000
    concurrency = int(argv[1]) if len(argv) > 1 else 64
    before = _rss_mib()
    done = anyio.run(_run, n, concurrency)
    print(json.dumps({"jobs": n, "succeeded": done, "rss_start": before, "rss_peak": _rss_mib()}))


if __name__ == "__main__":
    main(sys.argv[1:])
