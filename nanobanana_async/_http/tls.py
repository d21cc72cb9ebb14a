"""The default TLS context of the SDK's transports, built once per process."""

from __future__ import annotations

import ssl
import threading

import anyio.to_thread
import httpx

__all__ = ["default_ssl_context"]

_context: ssl.SSLContext | None = None
_lock = threading.Lock()


def _build() -> ssl.SSLContext:
    global _context
    # The first wave of a batch asks for it hundreds of times at once: one builds, the rest
    # wait for it instead of each loading the CA bundle again.
    with _lock:
        if _context is None:
            ctx = httpx.create_ssl_context()
            # Every transport built on it speaks HTTP/1.1 only.
            ctx.set_alpn_protocols(["http/1.1"])
            _context = ctx
        return _context


async def default_ssl_context() -> ssl.SSLContext:
    """httpx's default context (certifi CAs), built in a worker thread on first use.

    Loading the CA bundle takes tens of milliseconds of CPU: neither construction nor the event
    loop pays it.
    """
    return _context if _context is not None else await anyio.to_thread.run_sync(_build)
