"""Sending the generate route's answers, bent by the faults of a :class:`Plan`.

The app decides what a request gets (which fault, what is charged); this module puts it on
the wire: JSON errors and successes, gzip, lone surrogates in messages, cut and truncated
bodies, and the older faults (429, 5xx, drops). It also keeps the request's
:class:`Exchange`, the record of what it was charged and answered.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from typing import Final

import attrs

from .asgi import Send, cut, drop, json_bytes
from .faults import Fault, Faults, Plan
from .stats import EmulatorStats, GenerateRecord

__all__ = ["Exchange", "deliver_success", "inject", "respond", "respond_error"]

_PROXY_502: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_JSON: Final = b"application/json"


@attrs.define
class Exchange:
    """One generate request as it goes: what it met, was charged and was sent."""

    serial: int
    prompt: str | None = None
    idempotency_key: str | None = None
    credits: int = 0
    images: int = 0
    urls: int = 0
    status: int | None = None
    answered: bool = False
    client_left: bool = False
    faults: list[str] = attrs.field(factory=list)
    finished: bool = False

    def finish(self, stats: EmulatorStats) -> None:
        """Keep the record in ``stats`` (once), before the client can see the end of it."""
        if not self.finished:
            self.finished = True
            stats.record(self.record())

    def met(self, stats: EmulatorStats, kind: str) -> None:
        """Count a fault of ``kind`` for this request."""
        stats.faults[kind] += 1
        self.faults.append(kind)

    def record(self) -> GenerateRecord:
        """The frozen record of this request."""
        return GenerateRecord(
            serial=self.serial,
            prompt=self.prompt,
            idempotency_key=self.idempotency_key,
            credits=self.credits,
            images=self.images,
            urls=self.urls,
            status=self.status,
            answered=self.answered,
            client_left=self.client_left,
            faults=tuple(self.faults),
        )


async def respond(
    send: Send,
    stats: EmulatorStats,
    status: int,
    body: bytes,
    content_type: bytes | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    exchange: Exchange | None = None,
) -> None:
    """Send a complete response with its ``Content-Length``, counted by status; a generate
    request's answer carries ``x-request-id: req_<serial>``, as real APIs name theirs."""
    all_headers = [(b"content-length", str(len(body)).encode("ascii")), *headers]
    if content_type is not None:
        all_headers.append((b"content-type", content_type))
    stats.count_status(status)
    if exchange is not None:
        all_headers.append((b"x-request-id", b"req_%d" % exchange.serial))
        exchange.status, exchange.answered = status, True
        exchange.finish(stats)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _respond_json(
    send: Send,
    stats: EmulatorStats,
    status: int,
    body: bytes,
    plan: Plan | None,
    exchange: Exchange | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    if plan is not None and plan.gzip and exchange is not None:
        exchange.met(stats, "gzip")
        body = _gzip(body)
        headers = [*headers, (b"content-encoding", b"gzip")]
    await respond(send, stats, status, body, _JSON, headers, exchange)


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)


async def respond_error(
    send: Send,
    stats: EmulatorStats,
    code: int,
    message: str,
    *,
    as_http_200: bool,
    plan: Plan | None = None,
    exchange: Exchange | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send ``{"code": code, "message": message}``, HTTP 200 if ``as_http_200`` else ``code``.

    With a plan (the generate route), the message may carry lone surrogates and the body
    may be gzipped.
    """
    odd = plan.odd if plan is not None and exchange is not None else None
    if odd is not None and exchange is not None:
        exchange.met(stats, "odd_unicode_message")
        message = f"{message} {odd}"
    body = json_bytes({"code": code, "message": message}, ascii_only=odd is not None)
    status = 200 if as_http_200 else code
    await _respond_json(send, stats, status, body, plan, exchange, headers)


async def inject(
    fault: str,
    send: Send,
    stats: EmulatorStats,
    faults: Faults,
    plan: Plan,
    exchange: Exchange,
    *,
    errors_as_http_200: bool,
) -> None:
    """Answer with one of the outcomes that come before any charge: drop, 429, 5xx."""
    if fault == Fault.DROP_BEFORE:
        exchange.met(stats, Fault.DROP_BEFORE)
        await drop(send)
    elif fault == Fault.RATE_LIMITED:
        exchange.met(stats, "rate_limited")
        seconds = faults.retry_after
        headers = [
            (b"retry-after", str(math.ceil(seconds)).encode("ascii")),
            (b"retry-after-ms", str(round(seconds * 1000)).encode("ascii")),
        ]
        await respond_error(
            send,
            stats,
            429,
            "rate limit exceeded",
            as_http_200=errors_as_http_200,
            plan=plan,
            exchange=exchange,
            headers=headers,
        )
    elif fault == Fault.JSON_500:
        exchange.met(stats, "server_error_json")
        await respond_error(
            send,
            stats,
            500,
            "server error",
            as_http_200=errors_as_http_200,
            plan=plan,
            exchange=exchange,
        )
    elif fault == Fault.PROXY_502:
        exchange.met(stats, "server_error_html")
        await respond(send, stats, 502, _PROXY_502, b"text/html", exchange=exchange)
    else:
        exchange.met(stats, "server_error_html")
        await respond(send, stats, 503, b"", None, exchange=exchange)


def _cut_point(length: int, share: float) -> int:
    # At least one byte and never all of them.
    return 1 + min(int(share * (length - 1)), length - 2)


async def deliver_success(
    send: Send,
    stats: EmulatorStats,
    payload: bytes,
    plan: Plan,
    exchange: Exchange,
    *,
    charged: bool,
) -> None:
    """Send a success body (charged, or a replay) as the plan's outcome says."""
    if plan.outcome == Fault.TRUNCATED:
        exchange.met(stats, Fault.TRUNCATED)
        body = payload[: _cut_point(len(payload), plan.cut)]
        await _respond_json(send, stats, 200, body, plan, exchange)
    elif plan.outcome == Fault.CUT:
        exchange.met(stats, Fault.CUT)
        headers = [(b"content-type", _JSON)]
        if plan.gzip:
            exchange.met(stats, "gzip")
            payload = _gzip(payload)
            headers.append((b"content-encoding", b"gzip"))
        stats.count_status(200)
        exchange.status = 200
        exchange.finish(stats)
        await cut(send, 200, headers, payload, _cut_point(len(payload), plan.cut))
    elif plan.outcome == Fault.SUCCESS_5XX:
        exchange.met(stats, Fault.SUCCESS_5XX)
        await _respond_json(send, stats, plan.status, payload, plan, exchange)
    else:
        if charged:
            stats.generations += 1
            stats.images_generated += exchange.images
        await _respond_json(send, stats, 200, payload, plan, exchange)
