"""The emulator's ASGI application: routes, the generate handler and its faults."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Final

import httpx

from ..models import sizes_for
from ..pricing import DEFAULT_PRICES
from .asgi import (
    Receive,
    Scope,
    Send,
    drop,
    header,
    json_bytes,
    lifespan,
    origin,
    read_body,
    sleep_unless_disconnected,
)
from .faults import Fault, FaultDraws, Faults
from .images import image_urls, render_path
from .ledger import Ledger
from .requests import GenerateRequest, Refused, validate
from .stats import EmulatorStats
from .transport import InProcessTransport

__all__ = ["GENERATE_PATH", "STATS_PATH", "Emulator"]

GENERATE_PATH: Final = "/v1/images/generate"
STATS_PATH: Final = "/_emulator/stats"

_PROXY_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class Emulator:
    """The Nano Banana API as an ASGI app: ``await emulator(scope, receive, send)``.

    Args:
        keys: API key -> starting credits. Only these keys are accepted. ``None`` (the
            default) accepts any non-empty key, each starting with ``default_credits``.
        default_credits: the starting balance of each new key when ``keys`` is ``None``.
        prices: model -> credits per image (default: the built-in price table). The models
            named here are the ones accepted; a model the real API does not have takes the
            base sizes, plus the extended ones if its name starts with ``gemini-3.1-flash``.
        faults: what goes wrong and how often (default: nothing). The attribute
            ``emulator.faults`` may be replaced at any time, e.g. to take the server down
            in the middle of a test and bring it back.
        seed: seeds fault and latency draws: the same requests in the same order meet the
            same faults. ``None`` draws a fresh seed.
        image_base_url: origin of the returned image URLs, e.g. to put images on another
            host than the API. Default: the origin the request was sent to.
        errors_as_http_200: answer JSON errors with HTTP 200 and ``code != 0``, a quirk of
            the real API. Non-JSON faults (502 page, empty 503) and drops are unaffected.
        honour_idempotency: when a request repeats the ``Idempotency-Key`` of a success
            (same key and parameters), answer the same response again without charging.
            The real API makes no such promise, so it is off by default.
        max_num: the largest ``num`` accepted in one request.

    Works under asyncio and Trio. Memory stays flat however many images it generates:
    image URLs carry everything needed to redraw the image.
    """

    def __init__(
        self,
        *,
        keys: Mapping[str, int] | None = None,
        default_credits: int = 1_000_000,
        prices: Mapping[str, int] | None = None,
        faults: Faults | None = None,
        seed: int | None = 0,
        image_base_url: str | None = None,
        errors_as_http_200: bool = False,
        honour_idempotency: bool = False,
        max_num: int = 10,
    ) -> None:
        for name, value in (("default_credits", default_credits), ("max_num", max_num)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if max_num < 1:
            raise ValueError("max_num must be at least 1")
        table = dict(DEFAULT_PRICES if prices is None else prices)
        for model, price in table.items():
            if not isinstance(model, str) or not model:
                raise ValueError(f"model names must be non-empty strings, got {model!r}")
            if isinstance(price, bool) or not isinstance(price, int) or price < 0:
                raise ValueError(f"price of {model} must be an integer >= 0, got {price!r}")
        self.faults: Faults = Faults() if faults is None else faults
        self.stats: EmulatorStats = EmulatorStats()
        self.ledger = Ledger(keys, default_credits, honour_idempotency=honour_idempotency)
        self._prices = table
        self._sizes = {model: frozenset(sizes_for(model)) for model in table}
        self._draws = FaultDraws(seed)
        self._image_base_url = image_base_url.rstrip("/") if image_base_url else None
        self._errors_as_http_200 = errors_as_http_200
        self._max_num = max_num
        self._serial = itertools.count(1)

    def balance(self, api_key: str) -> int:
        """Credits left on ``api_key``. Raises ``KeyError`` for a key that is not accepted."""
        return self.ledger.balance(api_key)

    def set_balance(self, api_key: str, credits: int) -> None:
        """Set the credits of ``api_key``, accepting the key from now on if it was not."""
        self.ledger.set_balance(api_key, credits)

    def reset_stats(self) -> None:
        """Start counting afresh (requests still in flight stay counted as in flight)."""
        in_flight = self.stats.in_flight
        self.stats = EmulatorStats(in_flight=in_flight, max_in_flight=in_flight)

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that calls this emulator in-process, with no socket.

        Pass it as ``AsyncNanoBanana(..., transport=emulator.transport())`` or
        ``httpx.AsyncClient(transport=emulator.transport())``. Any base URL works. A
        dropped connection surfaces as :class:`httpx.RemoteProtocolError`, as a real socket
        closed by the server would.
        """
        return InProcessTransport(self)

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.stats.requests += 1
        method, path = scope["method"], scope["path"]
        if path == GENERATE_PATH and method == "POST":
            await self._generate(scope, receive, send)
        elif path.startswith("/images/") and method in ("GET", "HEAD"):
            await self._image(scope, send)
        elif path == STATS_PATH and method == "GET":
            await self._respond(send, 200, json_bytes(self.stats.to_dict()), b"application/json")
        else:
            await self._respond_error(send, 404, "not found", as_http_200=False)

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes | None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        all_headers = [(b"content-length", str(len(body)).encode("ascii")), *headers]
        if content_type is not None:
            all_headers.append((b"content-type", content_type))
        self.stats.count_status(status)
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _respond_error(
        self,
        send: Send,
        code: int,
        message: str,
        *,
        as_http_200: bool | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        quirk = self._errors_as_http_200 if as_http_200 is None else as_http_200
        body = json_bytes({"code": code, "message": message})
        await self._respond(send, 200 if quirk else code, body, b"application/json", headers)

    # -- generate ----------------------------------------------------------------------------

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        stats.generate_started()
        # Drawn on arrival, so the n-th request meets the n-th fault even when latency
        # ranges make concurrent requests finish in another order.
        delay, fault = self._draws.latency(self.faults), self._draws.fault(self.faults)
        try:
            body = await read_body(receive)
            if body is None:
                return  # the client left before sending its request: nobody to answer
            if delay > 0 and await sleep_unless_disconnected(delay, receive):
                return
            if fault not in (Fault.NONE, Fault.DROP_AFTER):
                await self._inject(fault, send)
                return
            try:
                request, charged, payload = self._handle(scope, body)
            except Refused as refused:
                if fault == Fault.DROP_AFTER:
                    self._drop_count(Fault.DROP_BEFORE)
                    await drop(send)
                await self._respond_error(send, refused.code, refused.message)
                return
            if fault == Fault.DROP_AFTER:
                self._drop_count(Fault.DROP_AFTER if charged else Fault.DROP_BEFORE)
                await drop(send)
            if charged:
                stats.generations += 1
                stats.images_generated += request.num
            await self._respond(send, 200, payload, b"application/json")
        finally:
            stats.in_flight -= 1

    async def _inject(self, fault: str, send: Send) -> None:
        counts = self.stats.faults
        if fault == Fault.DROP_BEFORE:
            self._drop_count(Fault.DROP_BEFORE)
            await drop(send)
        elif fault == Fault.RATE_LIMITED:
            counts["rate_limited"] += 1
            seconds = self.faults.retry_after
            headers = [
                (b"retry-after", str(math.ceil(seconds)).encode("ascii")),
                (b"retry-after-ms", str(round(seconds * 1000)).encode("ascii")),
            ]
            await self._respond_error(send, 429, "rate limit exceeded", headers=headers)
        elif fault == Fault.JSON_500:
            counts["server_error_json"] += 1
            await self._respond_error(send, 500, "server error")
        elif fault == Fault.PROXY_502:
            counts["server_error_html"] += 1
            await self._respond(send, 502, _PROXY_502, b"text/html")
        else:
            counts["server_error_html"] += 1
            await self._respond(send, 503, b"", None)

    def _drop_count(self, kind: str) -> None:
        self.stats.faults[kind] += 1

    def _handle(self, scope: Scope, body: bytes) -> tuple[GenerateRequest, bool, bytes]:
        """Authenticate, validate and charge: the request, whether it was charged, the body."""
        api_key = self.ledger.authenticate(header(scope, b"authorization"))
        request = validate(body, self._prices, self._sizes, self._max_num)
        raw_key = header(scope, b"idempotency-key")
        idempotency_key = raw_key.decode("latin-1") if raw_key else None

        def answer() -> bytes:
            urls = image_urls(self._image_base_url or origin(scope), request, next(self._serial))
            data = {"url": urls[0] if request.num == 1 else urls}
            return json_bytes({"code": 0, "message": "ok", "data": data})

        cost = self._prices[request.model] * request.num
        charged, payload = self.ledger.charge(
            api_key, request, cost, idempotency_key, answer, self.stats
        )
        return request, charged, payload

    # -- images ------------------------------------------------------------------------------

    async def _image(self, scope: Scope, send: Send) -> None:
        if header(scope, b"authorization") is not None:
            self.stats.image_requests_with_authorization += 1
        png = render_path(scope["path"])
        if png is None:
            await self._respond_error(send, 404, "not found", as_http_200=False)
            return
        self.stats.images_served += 1
        cache = (b"cache-control", b"public, max-age=31536000, immutable")
        await self._respond(send, 200, png, b"image/png", [cache])
