"""What a transport failure means to a caller: did the request reach the server?"""

from __future__ import annotations

import httpx

from ..errors import APIConnectionError, APITimeoutError, lost_answer

__all__ = ["connection_error", "request_was_sent"]


def connection_error(exc: httpx.HTTPError, target: str, *, sent: bool) -> APIConnectionError:
    """Map an httpx failure, saying whether the server may have acted on the request."""
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    detail = str(exc) or type(exc).__name__
    if not sent:
        return cls(f"could not reach {target}: {detail}", may_have_been_charged=False)
    return cls(lost_answer(target, detail), may_have_been_charged=True)


def request_was_sent(exc: httpx.HTTPError) -> bool:
    """Whether the request may have reached the server before ``exc``.

    Connect and pool failures happen before a byte of the request leaves; a failed write
    leaves the server an incomplete request it cannot act on. Anything later (read timeout,
    dropped connection) may come after the server did the work.
    """
    return not isinstance(
        exc,
        httpx.ConnectError
        | httpx.ConnectTimeout
        | httpx.PoolTimeout
        | httpx.WriteError
        | httpx.WriteTimeout
        | httpx.LocalProtocolError
        | httpx.UnsupportedProtocol,
    )
