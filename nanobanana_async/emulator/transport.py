"""The emulator in-process: an httpx transport that calls the ASGI app with no socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from .asgi import DropConnection, Receive, Scope, Send

__all__ = ["InProcessTransport"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class InProcessTransport(httpx.AsyncBaseTransport):
    """httpx's ASGI transport, with the emulator's dropped connections mapped as a socket's."""

    def __init__(self, app: ASGIApp) -> None:
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except DropConnection:
            # What httpcore raises when a real server closes the socket before answering.
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None

    async def aclose(self) -> None:
        await self._inner.aclose()
