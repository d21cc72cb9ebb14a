"""Benchmarks of nanobanana-async against hand-written httpx and aiohttp clients.

Run ``python -m benchmarks`` (``--quick`` for a smaller run); see ``docs/benchmarks.md``.
"""
