"""An emulator of the Nano Banana image API, for tests, demos and benchmarks.

:class:`Emulator` is a plain ASGI application that speaks the same HTTP API as the real
service: it checks API keys, validates requests like the real API, keeps a per-key credit
ledger (``insufficient credits`` once a key runs out), returns image URLs and serves them as
small real PNGs with the requested aspect ratio. It counts everything it sees in
:attr:`Emulator.stats` and can inject faults (:class:`Faults`): server errors with JSON or
non-JSON bodies, 429s with ``Retry-After``, latency, and dropped connections, some of them
after the generation was charged. Faults are drawn from a seeded random generator, so a test
sees the same sequence every run.

Use it in-process, with no socket, through :meth:`Emulator.transport`::

    from nanobanana_async import AsyncNanoBanana
    from nanobanana_async.emulator import Emulator, Faults

    emulator = Emulator(keys={"test-key": 100}, faults=Faults(server_error_rate=0.2), seed=1)
    async with AsyncNanoBanana("test-key", transport=emulator.transport()) as client:
        generation = await client.generate("a red fox")
    assert emulator.balance("test-key") == 100 - generation.credits

or over a real loopback socket (extra ``emulator``, which installs uvicorn) with
:func:`serve`::

    with serve(Emulator()) as server:
        ...  # point any HTTP client at server.base_url

or from a shell, for a separate process: ``python -m nanobanana_async.emulator --port 8000``
(``nanobanana emulator`` does the same).

Routes: ``POST /v1/images/generate``, ``GET /images/<id>.png`` and ``GET /_emulator/stats``
(the counters as JSON, for tests that run the emulator in another process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from types import FrameType
from typing import Any, Final, NoReturn

import anyio
import attrs
import httpx

from . import _png
from .models import sizes_for
from .pricing import DEFAULT_PRICES

__all__ = [
    "FAULT_KINDS",
    "Emulator",
    "EmulatorStats",
    "Faults",
    "RunningEmulator",
    "build_parser",
    "main",
    "parse_latency",
    "serve",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GENERATE_PATH: Final = "/v1/images/generate"
STATS_PATH: Final = "/_emulator/stats"
DEFAULT_MODEL: Final = "gemini-2.5-flash-image"

FAULT_KINDS: Final = (
    "server_error_json",
    "server_error_html",
    "rate_limited",
    "dropped_before_charge",
    "dropped_after_charge",
)
"""The keys of :attr:`EmulatorStats.faults`."""

MAX_REQUEST_START_TIMES: Final = 100_000
# A real API forgets idempotency keys after a while too; this keeps a million-request soak
# with honour_idempotency=True from holding every response forever.
MAX_REMEMBERED_REPLIES: Final = 100_000
MAX_BODY_BYTES: Final = 1 << 20

_IMAGE_PATH = re.compile(
    r"/images/(?P<digest>[0-9a-f]{16})_(?P<width>[1-9][0-9]{0,3})x(?P<height>[1-9][0-9]{0,3})"
    r"_(?P<index>0|[1-9][0-9]{0,3})_(?P<serial>[1-9][0-9]{0,15})\.png"
)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")

_PROXY_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# -- configuration -----------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rate(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a number in [0, 1], got {value!r}")


def _check_seconds(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _to_latency(
    value: float | tuple[float, float] | Sequence[float] | None,
) -> float | tuple[float, float]:
    # None is what an unset command-line option gives: no latency.
    if value is None:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        bounds: tuple[float, ...] = (float(value),)
    elif isinstance(value, Sequence) and len(value) == 2 and all(map(_is_number, value)):
        bounds = (float(value[0]), float(value[1]))
    else:
        raise ValueError(f"latency must be seconds or a (low, high) pair, got {value!r}")
    if not all(math.isfinite(b) and b >= 0 for b in bounds):
        raise ValueError(f"latency must be finite and >= 0, got {value!r}")
    if len(bounds) == 1:
        return bounds[0]
    low, high = bounds
    if low > high:
        raise ValueError(f"latency range must be (low, high) with low <= high, got {value!r}")
    return (low, high)


@attrs.frozen
class Faults:
    """What goes wrong, and how often, on ``POST /v1/images/generate``.

    Each generate request draws one outcome from the emulator's seeded generator: a drop
    (``drop_rate``), a 429 (``rate_limit_rate``), a 5xx (``server_error_rate``) or a normal
    answer, so the three rates are shares of all generate requests and must add up to at
    most 1. Image downloads and the stats route are never faulted.

    - ``server_error_rate``: share answered with a 5xx. Of those, ``html_error_share`` are
      not JSON (half an HTML ``502`` page as a proxy would send it, half an empty ``503``);
      the rest are HTTP 500 with ``{"code": 500, "message": "server error"}``.
    - ``rate_limit_rate``: share answered 429 ``{"code": 429, ...}`` with ``Retry-After``
      (whole seconds, rounded up) and ``retry-after-ms`` headers advertising ``retry_after``.
    - ``drop_rate``: share whose connection is closed with no complete response. Of those,
      ``drop_after_charge_share`` happen after the generation was done and charged: the
      ambiguous case a client cannot tell apart from a drop before it.
    - ``latency``: seconds spent before answering, fixed or uniform in ``(low, high)``. A
      client that disconnects during it is not answered and not charged.
    """

    server_error_rate: float = attrs.field(default=0.0, validator=_check_rate)
    html_error_share: float = attrs.field(default=0.5, validator=_check_rate)
    rate_limit_rate: float = attrs.field(default=0.0, validator=_check_rate)
    retry_after: float = attrs.field(default=1.0, validator=_check_seconds)
    drop_rate: float = attrs.field(default=0.0, validator=_check_rate)
    drop_after_charge_share: float = attrs.field(default=0.5, validator=_check_rate)
    latency: float | tuple[float, float] = attrs.field(default=0.0, converter=_to_latency)

    def __attrs_post_init__(self) -> None:
        total = self.server_error_rate + self.rate_limit_rate + self.drop_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                "server_error_rate + rate_limit_rate + drop_rate must be at most 1 "
                f"(they are shares of the same requests), got {total:g}"
            )


def parse_latency(text: str) -> float | tuple[float, float]:
    """Parse a latency option: seconds (``"0.1"``) or a range (``"0.05-0.2"``).

    Raises ``ValueError`` with a readable message for anything else.
    """
    parts = text.strip().split("-")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(
            f"expected seconds (0.1) or a range of seconds (0.05-0.2), got {text.strip()!r}"
        )
    if len(values) == 1:
        return values[0]
    if values[0] > values[1]:
        raise ValueError(f"the range must go from low to high, got {text.strip()!r}")
    return (values[0], values[1])


# -- counters ----------------------------------------------------------------------------------


def _no_faults() -> dict[str, int]:
    return dict.fromkeys(FAULT_KINDS, 0)


@attrs.define
class EmulatorStats:
    """Live counters of an :class:`Emulator` (``emulator.stats``; JSON at ``/_emulator/stats``).

    Attributes:
        requests: every HTTP request, whatever the route.
        generate_requests: ``POST /v1/images/generate`` requests, faulted or not.
        generations: generate requests answered with success (``code`` 0) and charged.
        images_generated: the sum of ``num`` over ``generations``.
        credits_charged: every credit taken from a ledger, including generations whose
            connection was then dropped (``faults["dropped_after_charge"]``).
        in_flight: generate requests being handled right now.
        max_in_flight: the most generate requests ever handled at once.
        faults: injected faults by kind (see :data:`FAULT_KINDS`). A drop planned after the
            charge of a request that was then refused (bad key, invalid, no credits, or a
            replay) charged nothing and counts as ``dropped_before_charge``.
        by_status: responses by HTTP status. Dropped connections have none.
        charged_idempotency_keys: ``Idempotency-Key`` header -> number of charged
            generations sent with it. More than 1 means a client paid twice.
        duplicate_charges: charged generations whose ``Idempotency-Key`` had already been
            charged before.
        idempotent_replays: requests answered from an earlier success without charging
            (only with ``honour_idempotency=True``; not counted in ``generations``).
        images_served: image downloads answered with a PNG.
        image_requests_with_authorization: image requests that carried an ``Authorization``
            header (an SDK should never send the API key to an image host).
        request_start_times: ``time.monotonic()`` at the start of each generate request, in
            arrival order; only the first 100 000 are kept so memory stays bounded.
    """

    requests: int = 0
    generate_requests: int = 0
    generations: int = 0
    images_generated: int = 0
    credits_charged: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: dict[str, int] = attrs.field(factory=_no_faults)
    by_status: dict[int, int] = attrs.field(factory=dict)
    charged_idempotency_keys: dict[str, int] = attrs.field(factory=dict)
    duplicate_charges: int = 0
    idempotent_replays: int = 0
    images_served: int = 0
    image_requests_with_authorization: int = 0
    request_start_times: list[float] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (``by_status`` keys become strings, as JSON needs)."""
        # dict() and list() copy in one step under the GIL, so reading from another thread
        # while the server thread counts cannot fail with "changed size during iteration".
        return {
            "requests": self.requests,
            "generate_requests": self.generate_requests,
            "generations": self.generations,
            "images_generated": self.images_generated,
            "credits_charged": self.credits_charged,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults": dict(self.faults),
            "by_status": {str(k): v for k, v in dict(self.by_status).items()},
            "charged_idempotency_keys": dict(self.charged_idempotency_keys),
            "duplicate_charges": self.duplicate_charges,
            "idempotent_replays": self.idempotent_replays,
            "images_served": self.images_served,
            "image_requests_with_authorization": self.image_requests_with_authorization,
            "request_start_times": list(self.request_start_times),
        }


# -- the application ---------------------------------------------------------------------------


class _DropConnection(Exception):
    """Raised by the app to have the server abort the connection mid-response."""


class _Fault:
    NONE = "none"
    JSON_500 = "server_error_json"
    PROXY_502 = "proxy_502"
    EMPTY_503 = "empty_503"
    RATE_LIMITED = "rate_limited"
    DROP_BEFORE = "dropped_before_charge"
    DROP_AFTER = "dropped_after_charge"


@attrs.frozen
class _Request:
    prompt: str
    num: int
    model: str
    image_size: str


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _json(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


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
        # The ledger may be touched from the server thread and the test thread at once.
        self._lock = threading.Lock()
        self._open = keys is None
        self._balances: dict[str, int] = {}
        for key, credits in (keys or {}).items():
            self.set_balance(key, credits)
        self._default_credits = default_credits
        self._prices = table
        self._sizes = {model: frozenset(sizes_for(model)) for model in table}
        self._fault_random = random.Random(seed)
        # Latency has its own generator so that turning it on does not change which
        # requests fail.
        self._latency_random = random.Random(None if seed is None else f"latency/{seed}")
        self._image_base_url = image_base_url.rstrip("/") if image_base_url else None
        self._errors_as_http_200 = errors_as_http_200
        self._honour_idempotency = honour_idempotency
        self._max_num = max_num
        self._serial = itertools.count(1)
        self._replies: dict[tuple[str, str], tuple[_Request, bytes]] = {}

    # -- ledger ------------------------------------------------------------------------------

    def balance(self, api_key: str) -> int:
        """Credits left on ``api_key``. Raises ``KeyError`` for a key that is not accepted."""
        api_key = api_key.strip()
        with self._lock:
            if api_key in self._balances:
                return self._balances[api_key]
            if self._open and api_key:
                return self._default_credits
        raise KeyError("unknown API key")

    def set_balance(self, api_key: str, credits: int) -> None:
        """Set the credits of ``api_key``, accepting the key from now on if it was not."""
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("an API key must be a non-empty string")
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise ValueError(f"credits must be an integer >= 0, got {credits!r}")
        with self._lock:
            self._balances[api_key.strip()] = credits

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
        return _EmulatorTransport(self)

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
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
            await self._respond(send, 200, _json(self.stats.to_dict()), b"application/json")
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
        by_status = self.stats.by_status
        by_status[status] = by_status.get(status, 0) + 1
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
        body = _json({"code": code, "message": message})
        await self._respond(send, 200 if quirk else code, body, b"application/json", headers)

    # -- generate ----------------------------------------------------------------------------

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.stats
        stats.generate_requests += 1
        if len(stats.request_start_times) < MAX_REQUEST_START_TIMES:
            stats.request_start_times.append(time.monotonic())
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        # Drawn on arrival, so the n-th request meets the n-th fault even when latency
        # ranges make concurrent requests finish in another order.
        delay, fault = self._draw_latency(), self._draw_fault()
        try:
            body = await _read_body(receive)
            if body is None:
                return  # the client left before sending its request: nobody to answer
            if delay > 0 and await _sleep_unless_disconnected(delay, receive):
                return
            if fault not in (_Fault.NONE, _Fault.DROP_AFTER):
                await self._inject(fault, send)
                return
            try:
                request, charged, payload = self._handle(scope, body)
            except _Refused as refused:
                if fault == _Fault.DROP_AFTER:
                    self._drop_count(_Fault.DROP_BEFORE)
                    await _drop(send)
                await self._respond_error(send, refused.code, refused.message)
                return
            if fault == _Fault.DROP_AFTER:
                self._drop_count(_Fault.DROP_AFTER if charged else _Fault.DROP_BEFORE)
                await _drop(send)
            if charged:
                self.stats.generations += 1
                self.stats.images_generated += request.num
            await self._respond(send, 200, payload, b"application/json")
        finally:
            self.stats.in_flight -= 1

    def _draw_latency(self) -> float:
        latency = self.faults.latency
        if isinstance(latency, tuple):
            return self._latency_random.uniform(*latency)
        return latency

    def _draw_fault(self) -> str:
        faults = self.faults
        # Always two draws, whatever the outcome, so the n-th request meets the same fault
        # for a given seed whatever the rates and earlier outcomes were.
        pick, detail = self._fault_random.random(), self._fault_random.random()
        if pick < faults.drop_rate:
            after = detail < faults.drop_after_charge_share
            return _Fault.DROP_AFTER if after else _Fault.DROP_BEFORE
        pick -= faults.drop_rate
        if pick < faults.rate_limit_rate:
            return _Fault.RATE_LIMITED
        pick -= faults.rate_limit_rate
        if pick < faults.server_error_rate:
            if detail < faults.html_error_share:
                # Split the non-JSON share between its two forms with the same draw.
                second_half = detail >= faults.html_error_share / 2
                return _Fault.EMPTY_503 if second_half else _Fault.PROXY_502
            return _Fault.JSON_500
        return _Fault.NONE

    async def _inject(self, fault: str, send: Send) -> None:
        counts = self.stats.faults
        if fault == _Fault.DROP_BEFORE:
            self._drop_count(_Fault.DROP_BEFORE)
            await _drop(send)
        elif fault == _Fault.RATE_LIMITED:
            counts["rate_limited"] += 1
            seconds = self.faults.retry_after
            headers = [
                (b"retry-after", str(math.ceil(seconds)).encode("ascii")),
                (b"retry-after-ms", str(round(seconds * 1000)).encode("ascii")),
            ]
            await self._respond_error(send, 429, "rate limit exceeded", headers=headers)
        elif fault == _Fault.JSON_500:
            counts["server_error_json"] += 1
            await self._respond_error(send, 500, "server error")
        elif fault == _Fault.PROXY_502:
            counts["server_error_html"] += 1
            await self._respond(send, 502, _PROXY_502, b"text/html")
        else:
            counts["server_error_html"] += 1
            await self._respond(send, 503, b"", None)

    def _drop_count(self, kind: str) -> None:
        self.stats.faults[kind] += 1

    def _handle(self, scope: Scope, body: bytes) -> tuple[_Request, bool, bytes]:
        """Authenticate, validate and charge: the request, whether it was charged, the body."""
        api_key = self._authenticate(scope)
        request = self._validate(body)
        raw_key = _header(scope, b"idempotency-key")
        idempotency_key = raw_key.decode("latin-1") if raw_key else None
        with self._lock:
            if self._honour_idempotency and idempotency_key is not None:
                remembered = self._replies.get((api_key, idempotency_key))
                if remembered is not None:
                    if remembered[0] != request:
                        raise _Refused(
                            400, "Idempotency-Key was already used with different parameters"
                        )
                    self.stats.idempotent_replays += 1
                    return request, False, remembered[1]
            cost = self._prices[request.model] * request.num
            balance = self._balances.get(api_key, self._default_credits)
            if balance < cost:
                raise _Refused(400, "insufficient credits")
            self._balances[api_key] = balance - cost
            payload = _json(
                {"code": 0, "message": "ok", "data": {"url": self._urls(scope, request)}}
            )
            self._count_charge(cost, idempotency_key)
            if self._honour_idempotency and idempotency_key is not None:
                if len(self._replies) >= MAX_REMEMBERED_REPLIES:
                    del self._replies[next(iter(self._replies))]
                self._replies[(api_key, idempotency_key)] = (request, payload)
        return request, True, payload

    def _count_charge(self, cost: int, idempotency_key: str | None) -> None:
        stats = self.stats
        stats.credits_charged += cost
        if idempotency_key is not None:
            seen = stats.charged_idempotency_keys.get(idempotency_key, 0)
            stats.charged_idempotency_keys[idempotency_key] = seen + 1
            if seen:
                stats.duplicate_charges += 1

    def _authenticate(self, scope: Scope) -> str:
        raw = _header(scope, b"authorization")
        scheme, _, key = (raw or b"").decode("latin-1").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _Refused(401, "invalid API key")
        with self._lock:
            if key in self._balances:
                return key
            if self._open:
                self._balances[key] = self._default_credits
                return key
        raise _Refused(401, "invalid API key")

    def _validate(self, body: bytes) -> _Request:
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(400, "request body too large")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise _Refused(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _Refused(400, "request body must be a JSON object")
        prompt = data.get("prompt")
        if prompt is None:
            raise _Refused(400, "prompt is required")
        if not isinstance(prompt, str):
            raise _Refused(400, "prompt must be a string")
        if not prompt.strip():
            raise _Refused(400, "prompt must not be empty")
        num = data.get("num", 1)
        if isinstance(num, bool) or not isinstance(num, int):
            raise _Refused(400, "num must be an integer")
        if not 1 <= num <= self._max_num:
            raise _Refused(400, f"num must be between 1 and {self._max_num}")
        model = data.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or model not in self._prices:
            raise _Refused(400, f"unknown model: {model}")
        size = data.get("image_size", "1:1")
        if not isinstance(size, str) or size not in self._sizes[model]:
            raise _Refused(400, f"image_size {size} is not supported by {model}")
        return _Request(prompt, num, model, size)

    def _urls(self, scope: Scope, request: _Request) -> str | list[str]:
        digest = hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).hexdigest()
        width, height = _png.size_for_ratio(request.image_size)
        serial = next(self._serial)
        base = self._image_base_url or _origin(scope)
        urls = [
            f"{base}/images/{digest[:16]}_{width}x{height}_{i}_{serial}.png"
            for i in range(request.num)
        ]
        return urls[0] if request.num == 1 else urls

    # -- images ------------------------------------------------------------------------------

    async def _image(self, scope: Scope, send: Send) -> None:
        if _header(scope, b"authorization") is not None:
            self.stats.image_requests_with_authorization += 1
        match = _IMAGE_PATH.fullmatch(scope["path"])
        width = int(match["width"]) if match else 0
        height = int(match["height"]) if match else 0
        if match is None or width > _png.MAX_SIDE or height > _png.MAX_SIDE:
            await self._respond_error(send, 404, "not found", as_http_200=False)
            return
        # The serial only makes URLs unique per generation; the picture depends on the prompt
        # and the image's index within its generation.
        png = _png.render(f"{match['digest']}/{match['index']}", width, height)
        self.stats.images_served += 1
        cache = (b"cache-control", b"public, max-age=31536000, immutable")
        await self._respond(send, 200, png, b"image/png", [cache])


def _origin(scope: Scope) -> str:
    scheme = scope.get("scheme", "http")
    host = (_header(scope, b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        server = scope.get("server") or ("127.0.0.1", None)
        name = f"[{server[0]}]" if ":" in server[0] else server[0]
        host = name if server[1] is None else f"{name}:{server[1]}"
    return f"{scheme}://{host}"


async def _drop(send: Send) -> NoReturn:
    # ASGI has no "abort": a server closes the connection when the app fails after the
    # response has started. No length is promised, so the client sees a truncated body.
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise _DropConnection


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
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


async def _sleep_unless_disconnected(delay: float, receive: Receive) -> bool:
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


class _EmulatorTransport(httpx.AsyncBaseTransport):
    def __init__(self, app: Emulator) -> None:
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except _DropConnection:
            # What httpcore raises when a real server closes the socket before answering.
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- running it on a socket --------------------------------------------------------------------


@attrs.frozen
class RunningEmulator:
    """An emulator being served by :func:`serve`: point clients at ``base_url``."""

    emulator: Emulator
    host: str
    port: int
    base_url: str


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DropConnection))


_quiet_drops = _QuietDrops()


class _Served:
    """Wraps the app under uvicorn so that stopping the server need not wait for slow work.

    Uvicorn waits for every request in progress before it exits, which with a latency of
    30 s means 30 s. On stop, requests still in progress are answered 503 at once instead.
    """

    def __init__(self, app: Emulator) -> None:
        self._app = app
        self._scopes: set[anyio.CancelScope] = set()
        self._stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Uvicorn runs on asyncio: this is the loop to reach from the calling thread.
            self.loop = asyncio.get_running_loop()
            await self._app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.CancelScope() as cancel:
            if self._stopping:
                cancel.cancel()
            self._scopes.add(cancel)
            try:
                await self._app(scope, receive, tracked_send)
            finally:
                self._scopes.discard(cancel)
        if cancel.cancelled_caught and not started:
            body = _json({"code": 503, "message": "emulator shutting down"})
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    def stop(self) -> None:
        """Cancel the requests in progress; call in the server's event loop."""
        self._stopping = True
        for cancel in list(self._scopes):
            cancel.cancel()


def _import_uvicorn() -> Any:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "serving the emulator on a socket needs uvicorn: "
            "pip install 'nanobanana-async[emulator]' "
            "(Emulator.transport() works in-process without it)",
            name="uvicorn",
        ) from None
    return uvicorn


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    # A wildcard address is where to listen, not where to connect.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def serve(
    emulator: Emulator | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningEmulator]:
    """Serve ``emulator`` over HTTP on ``host:port`` in a background thread (needs uvicorn).

    ``port=0`` picks a free port. Yields once the server accepts connections; on exit,
    requests still in progress are answered 503, the server stops and its thread is joined.
    Raises ``OSError`` if the address cannot be bound. Logs nothing below warnings, and
    nothing at all for the connections it drops on purpose::

        with serve(Emulator(faults=Faults(latency=0.1))) as server:
            client = AsyncNanoBanana("any-key", base_url=server.base_url)
    """
    uvicorn = _import_uvicorn()
    app = Emulator() if emulator is None else emulator
    served = _Served(app)
    logging.getLogger("uvicorn.error").addFilter(_quiet_drops)  # idempotent
    sock = _bind(host, port)
    try:
        config = uvicorn.Config(
            served,
            # Leave the host application's logging alone; uvicorn's own chatter is noise here.
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            ws="none",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="nanobanana-emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                raise RuntimeError("the emulator server did not start")
            time.sleep(0.005)
        bound_port = int(sock.getsockname()[1])
        try:
            yield RunningEmulator(app, host, bound_port, f"http://{_url_host(host)}:{bound_port}")
        finally:
            server.should_exit = True
            if served.loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop already closed
                    served.loop.call_soon_threadsafe(served.stop)
            thread.join(15)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)
    finally:
        sock.close()


# -- command line ------------------------------------------------------------------------------


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _latency_arg(text: str) -> float | tuple[float, float]:
    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m nanobanana_async.emulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m nanobanana_async.emulator",
        description="Serve the Nano Banana API emulator until Ctrl-C. Prints its base URL on "
        "one line once it is listening; any API key is accepted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    parser.add_argument(
        "--credits",
        type=_non_negative_int,
        default=1_000_000,
        help="credits each API key starts with (1000000)",
    )
    parser.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="share of generate requests given a 5xx"
    )
    parser.add_argument(
        "--rate-limit-rate", type=_rate, default=0.0, help="share given a 429 with Retry-After"
    )
    parser.add_argument(
        "--drop-rate", type=_rate, default=0.0, help="share whose connection is dropped"
    )
    parser.add_argument(
        "--latency",
        type=_latency_arg,
        default=0.0,
        metavar="S",
        help="seconds per generate request: fixed (0.1) or a range (0.05-0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault and latency draws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            server_error_rate=args.fail_rate,
            rate_limit_rate=args.rate_limit_rate,
            drop_rate=args.drop_rate,
            latency=args.latency,
        )
    except ValueError as exc:
        parser.error(str(exc))
    emulator = Emulator(default_credits=args.credits, faults=faults, seed=args.seed)
    stop = threading.Event()
    previous: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with serve(emulator, args.host, args.port) as server:
            print(server.base_url, flush=True)
            while not stop.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
