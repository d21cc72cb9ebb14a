"""The emulator in-process: an httpx transport that calls the ASGI app with no socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from .asgi import CutConnection, DropConnection, Receive, Scope, Send

__all__ = ["InProcessTransport"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class InProcessTransport(httpx.AsyncBaseTransport):
    """httpx's ASGI transport, with the emulator's dropped connections mapped as a socket's.

    A drop before any body (:class:`DropConnection`) fails the request; a body cut short of
    its ``Content-Length`` (:class:`CutConnection`) returns the response, whose body then
    fails to read, as httpcore does over a socket.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except CutConnection as cut:
            # The status and headers arrived; reading the body fails where it stops.
            return httpx.Response(
                cut.status, headers=cut.headers, stream=_CutBody(cut, request), request=request
            )
        except DropConnection:
            # What httpcore raises when a real server closes the socket before answering.
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CutBody(httpx.AsyncByteStream):
    """The part of a body that arrived, then what h11 raises when the socket closes."""

    def __init__(self, cut: CutConnection, request: httpx.Request) -> None:
        self._cut = cut
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._cut.sent:
            yield self._cut.sent
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body "
            f"(received {len(self._cut.sent)} bytes, expected {self._cut.length})",
            request=self._request,
        )
