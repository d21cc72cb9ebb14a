"""A batch process for the multi-process tests: ``python -m tests.limits.worker BACKEND ...``.

Runs ``--jobs`` prompts through ``AsyncNanoBanana.run_batch`` against ``--base-url`` under the
shared limits of ``--limits`` (a RedisLimits URL), on asyncio or Trio, and prints one JSON line
with its report when it ends (or, when the limits refused the whole batch, what was raised).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

import anyio

from nanobanana_async import AsyncNanoBanana, Job, NanoBananaError, RedisLimits


async def main(args: argparse.Namespace) -> None:
    limits = RedisLimits.from_url(args.limits)
    models = itertools.cycle(args.models.split(","))
    jobs = [Job(f"{args.tag} prompt {i}", model=next(models)) for i in range(args.jobs)]
    result: dict[str, Any]
    # Processes that boot together on two cores compete for CPU for a second or two:
    # starting the batches at one moment after that measures the limits, not the boot.
    await anyio.sleep(max(0.0, args.start_at - time.time()))
    try:
        async with AsyncNanoBanana(
            args.key, base_url=args.base_url, limits=limits, max_retries=args.max_retries
        ) as nb:
            report = await nb.run_batch(jobs, concurrency=args.concurrency)
    except NanoBananaError as exc:  # refused before the first job: nothing was sent
        result = {"raised": type(exc).__name__, "message": str(exc)}
    else:
        result = {
            "succeeded": report.succeeded,
            "failed": report.failed,
            "skipped": report.skipped,
            "credits_spent": report.credits_spent,
            "may_have_been_spent": sum(r.credits_may_have_been_spent for r in report.results),
            "errors": sorted({type(r.error).__name__ for r in report.results if r.error}),
        }
    print(json.dumps(result), flush=True)


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=("asyncio", "trio"))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--limits", required=True)
    parser.add_argument("--key", default="nb-limits-test-key-0123456789")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--models", default="gemini-2.5-flash-image", help="comma-separated")
    parser.add_argument("--tag", default="worker")
    parser.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at")
    args = parser.parse_args(argv)
    anyio.run(main, args, backend=args.backend)


if __name__ == "__main__":
    run()
