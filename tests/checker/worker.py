"""A store worker in a process of its own, for the store checker (:mod:`tests.checker.stores`):
``python -m tests.checker.worker CONFIG.json``.

``run_worker``'s iterator form inside the SDK's ``stop_on_signals``, as a worker in a container
runs it, on the event loop the config names, with the config's budgets and retries, and the
config's store faults injected into its own connections (``tests/support/store_faults.py``).
The API key comes from ``NANOBANANA_API_KEY``. It writes its report (every result it
reported, what was raised, the signal that stopped it) as JSON to the config's ``report``
path, and exits 143 when a SIGTERM stopped it, 0 otherwise (an SDK error included: the report
says which).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import httpx

from nanobanana_async import (
    AsyncNanoBanana,
    JobResult,
    LocalLimits,
    NanoBananaError,
    RetryPolicy,
    open_store,
)
from nanobanana_async.batch import stop_on_signals
from nanobanana_async.batch.stores import SqlStore
from tests.support.store_faults import StoreFaults


def result_entry(result: JobResult) -> dict[str, Any]:
    """What the checker needs of one result."""
    return {
        "id": result.id,
        "index": result.index,
        "prompt": result.job.prompt if result.job is not None else None,
        "status": result.status,
        "credits": result.credits,
        "maybe": result.credits_may_have_been_spent,
        "resumed": result.resumed,
        "attempts": result.attempts,
        "generated": result.generation is not None,
        "paths": [str(p) for p in result.paths],
        "text": f"{result.error or ''} {result.reason or ''}",
    }


async def work(config: dict[str, Any]) -> int:
    store = open_store(config["store"])
    assert isinstance(store, SqlStore)
    faults = config.get("faults")
    if faults:
        StoreFaults(**faults).install(store)
    limits = config.get("client_max_credits")
    policy = RetryPolicy(max_retries=config["max_retries"], initial_delay=0.001, max_delay=0.005)
    results: list[JobResult] = []
    raised: dict[str, str] | None = None
    client = AsyncNanoBanana(
        base_url=config["base_url"],
        limits=None if limits is None else LocalLimits(max_credits=limits),
        retry_policy=policy,
        retry_ambiguous=config["retry_ambiguous"],
        timeout=httpx.Timeout(10.0, pool=None),
    )
    async with stop_on_signals(grace=config["grace"]) as stopping, client:
        # SIGTERM is handled from here on: the checker waits for this before it sends one.
        await anyio.Path(config["report"] + ".ready").touch()
        run = stopping.watch(
            client.worker(
                store,
                concurrency=config["concurrency"],
                max_credits=config["max_credits"],
                download_dir=config["download_dir"],
                follow=config["follow"],
                poll_interval=config["poll"],
            )
        )
        try:
            async with run:
                async for result in run:
                    results.append(result)
        except NanoBananaError as exc:
            raised = {"type": type(exc).__name__, "message": str(exc)}
        report = run.report(results)
    received = stopping.signal
    written = {
        "results": [result_entry(r) for r in report.results],
        "reported": [r.index for r in results],
        "raised": raised,
        "signal": received.name if received is not None else None,
        "stop_cause": report.stop_cause,
    }
    await anyio.Path(config["report"]).write_text(json.dumps(written))
    return 128 + received if received is not None else 0


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        settings = json.load(fh)
    sys.exit(anyio.run(work, settings, backend=settings["backend"]))
