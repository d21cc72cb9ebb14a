"""The ASGI plumbing the emulator's routes share: types, bodies, disconnects, drops."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, NoReturn

import anyio

__all__ = [
    "MAX_BODY_BYTES",
    "CutConnection",
    "DropConnection",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "cut",
    "drop",
    "header",
    "json_bytes",
    "lifespan",
    "origin",
    "read_body",
    "sleep_unless_disconnected",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES: Final = 1 << 20
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class DropConnection(Exception):
    """Raised by the app to have the server abort the connection mid-response."""


class CutConnection(DropConnection):
    """The app sent a status, headers and part of the body they promise, then gave up.

    Carries what was sent, so that an in-process transport can hand the client the same
    thing a socket would: the response, then an error while reading its body.
    """

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], sent: bytes, length: int
    ) -> None:
        super().__init__(f"connection closed after {len(sent)} of {length} body bytes")
        self.status = status
        self.headers = headers
        self.sent = sent
        self.length = length


def json_bytes(payload: object, *, ascii_only: bool = False) -> bytes:
    """Compact JSON. ``ascii_only`` escapes everything outside ASCII, lone surrogates too."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=ascii_only)
    return text.encode("ascii" if ascii_only else "utf-8")


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def origin(scope: Scope) -> str:
    scheme = scope.get("scheme", "http")
    host = (header(scope, b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        server = scope.get("server") or ("127.0.0.1", None)
        name = f"[{server[0]}]" if ":" in server[0] else server[0]
        host = name if server[1] is None else f"{name}:{server[1]}"
    return f"{scheme}://{host}"


async def drop(send: Send) -> NoReturn:
    # ASGI has no "abort": a server closes the connection when the app fails after the
    # response has started. No length is promised, so the client sees a truncated body.
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise DropConnection


async def cut(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep: int
) -> NoReturn:
    """Promise ``body`` with its ``Content-Length``, send its first ``keep`` bytes, give up.

    A server (uvicorn) closes the connection when the app fails after the response started,
    so the client reads a body shorter than its ``Content-Length``.
    """
    headers = [(b"content-length", str(len(body)).encode("ascii")), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body[:keep], "more_body": True})
    raise CutConnection(status, headers, body[:keep], len(body))


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes | None:
    """The request body, or ``None`` if the client disconnected first.

    A body over the limit is read to the end (so the connection stays usable) but only
    its first bytes are kept, enough for validation to refuse it.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def sleep_unless_disconnected(delay: float, receive: Receive) -> bool:
    """Sleep ``delay`` seconds; return early with ``True`` if the client disconnects.

    Without this, a server with long latency would keep working for clients that gave up,
    and a server shutting down would wait for all of them.
    """
    left = False

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        await anyio.sleep(delay)
        tg.cancel_scope.cancel()
    return left
