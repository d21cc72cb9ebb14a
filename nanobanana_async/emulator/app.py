"""The emulator's ASGI application: routes, the generate handler and its faults."""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Final, overload

import anyio
import httpx

from ..models import sizes_for
from ..pricing import DEFAULT_PRICES
from .answers import Exchange, deliver_success, inject, respond, respond_error
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
from .faults import Fault, FaultDraws, Faults, Plan
from .images import bad_url, image_urls, render_path, with_odd_text
from .ledger import Ledger
from .requests import Refused, validate
from .stats import DEFAULT_PAGE, EmulatorStats
from .transport import InProcessTransport

__all__ = ["GENERATE_PATH", "STATS_PATH", "Emulator"]

GENERATE_PATH: Final = "/v1/images/generate"
STATS_PATH: Final = "/_emulator/stats"


@overload
def _count(query: dict[str, list[str]], name: str, default: int) -> int: ...
@overload
def _count(query: dict[str, list[str]], name: str, default: None) -> int | None: ...
def _count(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values:
        return default
    if len(values) > 1 or not values[0].isdigit():
        raise ValueError(f"{name} must be one whole number >= 0, got {', '.join(values)!r}")
    return int(values[0])


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
        if path == GENERATE_PATH:
            allowed: tuple[str, ...] = ("POST",)
        elif path.startswith("/images/"):
            allowed = ("GET", "HEAD")
        elif path == STATS_PATH:
            allowed = ("GET",)
        else:
            await respond_error(send, self.stats, 404, "not found", as_http_200=False)
            return
        if method not in allowed:
            # A route that exists, asked with another method: HTTP says 405 and what is allowed.
            await respond_error(
                send,
                self.stats,
                405,
                f"method {method} not allowed: use {' or '.join(allowed)}",
                as_http_200=False,
                headers=[(b"allow", ", ".join(allowed).encode("ascii"))],
            )
        elif path == GENERATE_PATH:
            await self._generate(scope, receive, send)
        elif path == STATS_PATH:
            await self._stats(scope, send)
        else:
            await self._image(scope, send)

    async def _stats(self, scope: Scope, send: Send) -> None:
        # Bounded by default: every counter, and the last DEFAULT_PAGE records of each list
        # (?limit=N&offset=M for another window; "page" in the answer says where it is).
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            limit = _count(query, "limit", DEFAULT_PAGE)
            offset = _count(query, "offset", None)
        except ValueError as exc:
            await respond_error(send, self.stats, 400, str(exc), as_http_200=False)
            return
        body = json_bytes(self.stats.to_dict(offset=offset, limit=limit))
        await self._respond(send, 200, body, b"application/json")

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes | None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        await respond(send, self.stats, status, body, content_type, headers)

    # -- generate ----------------------------------------------------------------------------

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        stats.generate_started()
        exchange = Exchange(serial=stats.generate_requests)
        # Drawn on arrival, so the n-th request meets the n-th fault even when latency
        # ranges make concurrent requests finish in another order.
        faults = self.faults
        delay, fault = self._draws.latency(faults), self._draws.fault(faults)
        plan = self._draws.plan(faults, fault)
        try:
            body = await read_body(receive)
            if body is None:
                exchange.client_left = True
                return  # the client left before sending its request: nobody to answer
            if delay > 0 and await self._wait(delay, receive, scope, body, plan, exchange):
                return
            if fault not in (Fault.NONE, Fault.DROP_AFTER):
                await inject(
                    fault,
                    send,
                    stats,
                    faults,
                    plan,
                    exchange,
                    errors_as_http_200=self._errors_as_http_200,
                )
                return
            try:
                charged, payload = self._handle(scope, body, plan, exchange)
            except Refused as refused:
                if fault == Fault.DROP_AFTER:
                    exchange.met(stats, Fault.DROP_BEFORE)
                    await drop(send)
                await respond_error(
                    send,
                    stats,
                    refused.code,
                    refused.message,
                    as_http_200=self._errors_as_http_200,
                    plan=plan,
                    exchange=exchange,
                )
                return
            if fault == Fault.DROP_AFTER:
                exchange.met(stats, Fault.DROP_AFTER if charged else Fault.DROP_BEFORE)
                await drop(send)
            await deliver_success(send, stats, payload, plan, exchange, charged=charged)
        finally:
            stats.in_flight -= 1
            exchange.finish(stats)

    async def _wait(
        self,
        delay: float,
        receive: Receive,
        scope: Scope,
        body: bytes,
        plan: Plan,
        exchange: Exchange,
    ) -> bool:
        """Sleep the latency; True if the client hung up (charged anyway if the plan says so)."""
        try:
            left = await sleep_unless_disconnected(delay, receive)
        except anyio.get_cancelled_exc_class():
            # In-process, a client that gives up cancels the app itself.
            self._hung_up(scope, body, plan, exchange)
            raise
        if left:
            self._hung_up(scope, body, plan, exchange)
        return left

    def _hung_up(self, scope: Scope, body: bytes, plan: Plan, exchange: Exchange) -> None:
        exchange.client_left = True
        if not plan.charge_on_hangup:
            return
        try:
            charged, _ = self._handle(scope, body, plan, exchange)
        except Refused:
            return
        if charged:
            exchange.met(self.stats, "charged_after_hangup")

    def _handle(
        self, scope: Scope, body: bytes, plan: Plan, exchange: Exchange
    ) -> tuple[bool, bytes]:
        """Authenticate, validate and charge: whether it was charged, and the success body."""
        stats = self.stats
        api_key = self.ledger.authenticate(header(scope, b"authorization"))
        request = validate(body, self._prices, self._sizes, self._max_num)
        raw_key = header(scope, b"idempotency-key")
        idempotency_key = raw_key.decode("latin-1") if raw_key else None
        exchange.prompt, exchange.idempotency_key = request.prompt, idempotency_key
        count = plan.url_count(request.num)
        images = min(count, request.num)
        price = self._prices[request.model]

        def answer() -> bytes:
            base = self._image_base_url or origin(scope)
            urls = image_urls(base, request, next(self._serial), count)
            for kind, applies in (
                ("partial", count < request.num),
                ("extra", count > request.num),
                ("bad_urls", plan.bad_url is not None),
                ("odd_unicode_urls", plan.odd is not None),
            ):
                if applies:
                    exchange.met(stats, kind)
            stats.images_missing += max(request.num - count, 0)
            stats.images_extra += max(count - request.num, 0)
            if plan.bad_url is not None:
                urls = [bad_url(plan.bad_url, url) for url in urls]
            if plan.odd is not None:
                urls = [with_odd_text(url, plan.odd) for url in urls]
            exchange.urls, exchange.images, exchange.credits = len(urls), images, price * images
            data = {"url": urls[0] if len(urls) == 1 and request.num == 1 else urls}
            return json_bytes({"code": 0, "message": "ok", "data": data}, ascii_only=bool(plan.odd))

        return self.ledger.charge(
            api_key,
            request,
            price * images,
            idempotency_key,
            answer,
            stats,
            required=price * request.num,
        )

    # -- images ------------------------------------------------------------------------------

    async def _image(self, scope: Scope, send: Send) -> None:
        if header(scope, b"authorization") is not None:
            self.stats.image_requests_with_authorization += 1
        png = render_path(scope["path"])
        if png is None:
            await respond_error(send, self.stats, 404, "not found", as_http_200=False)
            return
        self.stats.images_served += 1
        cache = (b"cache-control", b"public, max-age=31536000, immutable")
        await self._respond(send, 200, png, b"image/png", [cache])
