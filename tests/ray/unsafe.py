"""The unsafe design of issue 23, for the tests to show that their checks catch it.

What a Ray user writes without the integration: an actor class holding one client, whose
async ``__call__`` generates each row of its batch. Ray Data runs it at least once (lazy
re-reads, retried tasks), and it pays again each time. Same output columns as
``nanobanana_async.ray``, so the same checks judge both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa

from nanobanana_async import AsyncNanoBanana, NanoBananaError
from nanobanana_async.ray import RESULT_SCHEMA


class UnsafeGenerator:
    def __init__(self, base_url: str, concurrency: int = 8) -> None:
        self.client = AsyncNanoBanana("sk-ray", base_url=base_url)
        self.concurrency = concurrency

    async def __call__(self, batch: pa.Table) -> pa.Table:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(row_id: Any, prompt: str) -> dict[str, Any]:
            async with slots:
                try:
                    generation = await self.client.generate(prompt)
                except NanoBananaError as exc:
                    return _row(row_id, [], 0, "failed", str(exc))
                return _row(row_id, list(generation.urls), generation.credits, "succeeded", None)

        ids = batch.column("id").to_pylist()
        prompts = batch.column("prompt").to_pylist()
        rows = await asyncio.gather(*(one(i, p) for i, p in zip(ids, prompts, strict=True)))
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _row(
    row_id: Any, urls: list[str], credits: int, status: str, error: str | None
) -> dict[str, Any]:
    return {
        "id": str(row_id),
        "urls": urls,
        "credits": credits,
        "status": status,
        "error": error,
        "resumed": False,
    }
