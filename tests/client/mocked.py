"""Mocked HTTP for the client tests: a respx router as the client's transport."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
import respx

from nanobanana_async import AsyncNanoBanana, RetryPolicy

KEY = "nb-live-0123456789abcdefXYZW"
BASE = "https://api.nanobanana.test"
GENERATE = BASE + "/v1/images/generate"
CDN = "https://cdn.images.test"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40

# Stopping early inside httpx's nested async generators (Response.aiter_bytes -> aiter_raw -> the
# transport's stream) leaves the inner ones to the garbage collector, and Trio warns about each
# one. The SDK cannot close them from outside: encode/httpx#3686, encode/httpx#3777.
HTTPX_ABANDONED_GENERATORS = pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")


def ok(*urls: str) -> httpx.Response:
    url: str | list[str] = urls[0] if len(urls) == 1 else list(urls)
    return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": url}})


def seq(*outcomes: httpx.Response | Exception) -> list[httpx.Response | Exception]:
    """What a route answers to successive requests."""
    return list(outcomes)


def server_error() -> httpx.Response:
    return httpx.Response(500, json={"code": 500, "message": "server error"})


def key_pieces(text: str, size: int = 8) -> list[str]:
    """Every ``size``-character piece of the key found in ``text``."""
    return [KEY[i : i + size] for i in range(len(KEY) - size + 1) if KEY[i : i + size] in text]


def client_for(router: respx.MockRouter, **kwargs: Any) -> AsyncNanoBanana:
    kwargs.setdefault("retry_policy", FAST)
    kwargs.setdefault("base_url", BASE)
    return AsyncNanoBanana(KEY, transport=httpx.MockTransport(router.async_handler), **kwargs)


def client_with(
    handler: Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]], **kwargs: Any
) -> AsyncNanoBanana:
    kwargs.setdefault("retry_policy", FAST)
    kwargs.setdefault("base_url", BASE)
    return AsyncNanoBanana(KEY, transport=httpx.MockTransport(handler), **kwargs)
