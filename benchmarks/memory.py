"""Peak RSS of a lazy batch through an in-process transport: ``python -m benchmarks.memory N``.

Run in its own process so that the peak RSS is this batch's and nothing else's. Prints
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
    """Peak RSS of this process in MiB.

    ``VmHWM`` where /proc has it: Linux carries ``ru_maxrss`` over from the parent across fork
    and exec, so a child of a large benchmark process would report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
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
    peak = _rss_mib()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"jobs": n, "succeeded": done, "rss_start": before, "rss_peak": peak, "maxrss": maxrss}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
