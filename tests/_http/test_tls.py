"""The default TLS context is built once per process, however many requests ask at once."""

from __future__ import annotations

import ssl

import anyio
import httpx
import pytest

from nanobanana_async._http import tls as _tls

pytestmark = pytest.mark.anyio


async def test_a_first_wave_of_requests_builds_one_context(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[ssl.SSLContext] = []
    real = httpx.create_ssl_context

    def counting() -> ssl.SSLContext:
        ctx = real()
        built.append(ctx)
        return ctx

    monkeypatch.setattr(_tls, "_context", None)
    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    contexts: list[ssl.SSLContext] = []

    async def ask() -> None:
        contexts.append(await _tls.default_ssl_context())

    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(ask)
    assert len(built) == 1
    assert all(ctx is built[0] for ctx in contexts)
    assert len(contexts) == 64
