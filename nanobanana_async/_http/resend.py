"""When a request that failed on a reused connection is sent once more: Go net/http's rule.

A server may close a keep-alive connection at any moment (an idle timeout, or after every
answer without saying ``Connection: close``). A request written in the instant before its FIN
arrives fails after it was sent, although the server never read it. Polling idle sockets
before reuse (:mod:`~nanobanana_async._net.idle`) narrows that window but cannot close it.

Go's transport (``persistConn.shouldRetryRequest``) sends such a request again on a new
connection when all of these hold, and so does every transport here:

- the connection was reused (a fresh one has no reason to be closed under the request: a
  failure there may come after the server acted on it);
- nothing of the answer arrived: the write failed, or the first read met the end of the
  stream or a reset;
- the request is replayable: its body is in memory and its method is idempotent, or it
  carries an ``Idempotency-Key`` (or ``X-Idempotency-Key``) header, as every generate request
  does.

Anything else (a timeout, a failure after part of the answer, a fresh connection) stays what
it was: for a generate request, "may have been charged".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

__all__ = ["NO_ANSWER", "ReuseTrace", "replayable"]

#: The failures that, before any byte of the answer on a reused connection, mean the server
#: closed it under the request (a timeout is not one of them: the server may be working).
NO_ANSWER: tuple[type[httpx.TransportError], ...] = (
    httpx.ReadError,
    httpx.RemoteProtocolError,
    httpx.WriteError,
)

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_KEYS = frozenset({"idempotency-key", "x-idempotency-key"})


def replayable(method: str, header_names: Iterable[str]) -> bool:
    """Whether a request (its body in memory) may be sent again: Go's ``isReplayable``."""
    return method.upper() in _IDEMPOTENT or any(name.lower() in _KEYS for name in header_names)


class ReuseTrace:
    """An httpcore ``trace`` extension that tells whether a request went out on a reused
    connection: it wrote its head without connecting first.

    httpcore (httpx's own transport) does not resend, and says nothing of reuse otherwise.
    It does not say either whether part of an answer's head arrived before a failure: on that
    path a head cut short counts as no answer (a server that starts answering and then hangs
    up without a complete head is rarer than the race this handles).
    """

    __slots__ = ("connected", "wrote")

    def __init__(self) -> None:
        self.connected = False
        self.wrote = False

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event.startswith("connection.connect_"):
            self.connected = True
        elif event.endswith(".send_request_headers.started"):
            self.wrote = True

    @property
    def reused(self) -> bool:
        """Whether the request was written on a connection opened for an earlier one."""
        return self.wrote and not self.connected
