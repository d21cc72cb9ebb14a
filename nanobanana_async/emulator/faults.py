"""What goes wrong on the emulator, and how often: :class:`Faults` and the seeded draws."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final

import attrs

__all__ = [
    "BAD_URL_KINDS",
    "FAULT_KINDS",
    "FAULT_RATES",
    "ODD_TEXTS",
    "Fault",
    "FaultDraws",
    "Faults",
    "Plan",
    "parse_fault",
    "parse_latency",
    "with_fault_options",
]

FAULT_KINDS: Final = (
    "server_error_json",
    "server_error_html",
    "rate_limited",
    "dropped_before_charge",
    "dropped_after_charge",
    "truncated_success",
    "cut_success",
    "success_as_5xx",
    "charged_after_hangup",
    "gzip",
    "odd_unicode_message",
    "odd_unicode_urls",
    "bad_urls",
    "partial",
    "extra",
)
"""The keys of :attr:`EmulatorStats.faults`."""


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

    Every rate is a share of generate requests, a number in [0, 1]. Image downloads and the
    stats route are never faulted.

    **Outcomes** replace the normal answer. Each request meets at most one, so their rates
    must add up to at most 1: ``drop_rate + rate_limit_rate + server_error_rate +
    truncated_success_rate + cut_success_rate + success_as_5xx_rate <= 1``.

    - ``server_error_rate``: answered with a 5xx. Of those, ``html_error_share`` are not
      JSON (half an HTML ``502`` page as a proxy would send it, half an empty ``503``); the
      rest are HTTP 500 with ``{"code": 500, "message": "server error"}``. Not charged.
    - ``rate_limit_rate``: answered 429 ``{"code": 429, ...}`` with ``Retry-After`` (whole
      seconds, rounded up) and ``retry-after-ms`` headers advertising ``retry_after``.
    - ``drop_rate``: the connection is closed with no complete response. Of those,
      ``drop_after_charge_share`` happen after the generation was done and charged: the
      ambiguous case a client cannot tell apart from a drop before it.
    - ``truncated_success_rate``: charged, then answered HTTP 200 with the success JSON cut
      short (at least one byte, never all of it). ``Content-Length`` matches the cut body,
      so the HTTP exchange is complete and only the JSON is broken.
    - ``cut_success_rate``: charged, then ``Content-Length`` promises the whole success body
      and the connection is closed after part of it (a proxy cutting it). Over a socket and
      in-process alike, the client sees the status and headers, then
      :class:`httpx.RemoteProtocolError` while reading the body.
    - ``success_as_5xx_rate``: charged, then answered HTTP 500, 502 or 503 whose JSON body
      is the normal success (``code`` 0 with the URLs).

    These three only meet requests that would succeed; a refused request (bad key, invalid,
    no credits) gets its normal refusal instead, and counts as no fault.

    **Modifiers** change an answer and combine freely with the outcomes and each other:

    - ``gzip_rate``: a JSON answer (success or error) is sent gzip-compressed with
      ``Content-Encoding: gzip`` and the compressed ``Content-Length``, even to a client
      that asked for ``Accept-Encoding: identity``. Cut bodies are cut after compression
      (``cut_success``) or before it (``truncated_success``: the JSON is cut, then
      compressed whole).
    - ``odd_unicode_rate``: a JSON answer carries lone UTF-16 surrogates as JSON escapes
      (``"\\ud83e"``): appended to the ``message`` of an error, inserted before ``.png`` in
      every URL of a success (such a URL cannot be fetched).
    - ``bad_url_rate``: every URL of a success is a string nobody can fetch: a port out of
      range (``http://127.0.0.1:99999/...``), a host label over 63 characters, a broken IPv6
      literal, a space in the host, no host, an empty string, port 0, or an ``ftp``
      URL. Charged as normal.
    - ``partial_rate`` / ``extra_rate`` (together at most 1): a success has fewer URLs than
      ``num`` (1 to ``num - 1``; a request with ``num == 1`` cannot be partial), charged per
      URL returned, or more than ``num`` (``num + 1`` to ``2 * num``), charged for ``num``.
      ``data.url`` is a string only when exactly one URL is returned for ``num == 1``.
    - ``charge_on_hangup_rate``: a client that hangs up during the latency (disconnects
      over a socket; in-process, cancels the call) is charged anyway, as if the server
      finished the work: nobody is answered. Without it such a client is never charged.
      A request still waiting when :func:`serve` stops counts as hung up too.

    Modifiers that change the success body (URLs, their number, the charge) are decided at
    charge time: an idempotent replay sends the remembered body again.

    ``latency``: seconds spent before answering, fixed or uniform in ``(low, high)``.

    The draws are seeded (``Emulator(seed=...)``): the n-th generate request meets the n-th
    draw whatever happened before. The outcomes above the line (drop, 429, 5xx), latency and
    the others each come from their own generator, so turning a new fault on leaves the
    requests that drop, 429 or 5xx unchanged.
    """

    server_error_rate: float = attrs.field(default=0.0, validator=_check_rate)
    html_error_share: float = attrs.field(default=0.5, validator=_check_rate)
    rate_limit_rate: float = attrs.field(default=0.0, validator=_check_rate)
    retry_after: float = attrs.field(default=1.0, validator=_check_seconds)
    drop_rate: float = attrs.field(default=0.0, validator=_check_rate)
    drop_after_charge_share: float = attrs.field(default=0.5, validator=_check_rate)
    latency: float | tuple[float, float] = attrs.field(default=0.0, converter=_to_latency)
    truncated_success_rate: float = attrs.field(default=0.0, validator=_check_rate)
    cut_success_rate: float = attrs.field(default=0.0, validator=_check_rate)
    success_as_5xx_rate: float = attrs.field(default=0.0, validator=_check_rate)
    gzip_rate: float = attrs.field(default=0.0, validator=_check_rate)
    odd_unicode_rate: float = attrs.field(default=0.0, validator=_check_rate)
    bad_url_rate: float = attrs.field(default=0.0, validator=_check_rate)
    partial_rate: float = attrs.field(default=0.0, validator=_check_rate)
    extra_rate: float = attrs.field(default=0.0, validator=_check_rate)
    charge_on_hangup_rate: float = attrs.field(default=0.0, validator=_check_rate)

    def __attrs_post_init__(self) -> None:
        total = self.server_error_rate + self.rate_limit_rate + self.drop_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                "server_error_rate + rate_limit_rate + drop_rate must be at most 1 "
                f"(they are shares of the same requests), got {total:g}"
            )
        total += self.truncated_success_rate + self.cut_success_rate + self.success_as_5xx_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                "the outcome rates (server_error_rate, rate_limit_rate, drop_rate, "
                "truncated_success_rate, cut_success_rate, success_as_5xx_rate) must add up "
                f"to at most 1 (each request meets at most one), got {total:g}"
            )
        if self.partial_rate + self.extra_rate > 1.0 + 1e-9:
            raise ValueError(
                "partial_rate + extra_rate must be at most 1 (a success is either short or "
                f"long), got {self.partial_rate + self.extra_rate:g}"
            )


FAULT_RATES: Final = tuple(
    field.name for field in attrs.fields(Faults) if field.validator is _check_rate
)
"""The fields of :class:`Faults` that take a share in [0, 1] (what ``--fault`` may set)."""


def parse_fault(text: str) -> tuple[str, float]:
    """Parse a ``NAME=RATE`` option into a :class:`Faults` field name and its share.

    ``NAME`` is a field of :data:`FAULT_RATES`, with or without its ``_rate`` suffix
    (``gzip=0.1`` or ``gzip_rate=0.1``). Raises ``ValueError`` naming the known faults.
    """
    name, equals, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not equals or not name:
        raise ValueError(f"expected NAME=RATE (for example gzip=0.1), got {text.strip()!r}")
    field = name if name in FAULT_RATES else f"{name}_rate"
    if field not in FAULT_RATES:
        known = ", ".join(n.removesuffix("_rate") for n in FAULT_RATES)
        raise ValueError(f"unknown fault {name!r}; known faults: {known}")
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{field} must be a number from 0 to 1, got {value.strip()!r}")
    return field, rate


def with_fault_options(faults: Faults, options: Sequence[str]) -> Faults:
    """``faults`` with the ``NAME=RATE`` options applied in order (the last one wins).

    Raises ``ValueError`` for an unknown name, a bad rate, or rates that do not add up.
    """
    changes = dict(parse_fault(option) for option in options)
    return attrs.evolve(faults, **changes)


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


class Fault:
    """The outcomes a generate request can be given."""

    NONE = "none"
    JSON_500 = "server_error_json"
    PROXY_502 = "proxy_502"
    EMPTY_503 = "empty_503"
    RATE_LIMITED = "rate_limited"
    DROP_BEFORE = "dropped_before_charge"
    DROP_AFTER = "dropped_after_charge"
    TRUNCATED = "truncated_success"
    CUT = "cut_success"
    SUCCESS_5XX = "success_as_5xx"


ODD_TEXTS: Final = ("\ud83e", "\udc00", "\ude00\ud83d", "\ud800\ud800")
"""Lone surrogates (a high one, a low one, a reversed pair, two highs) for ``odd_unicode``."""

BAD_URL_KINDS: Final = (
    "port_out_of_range",
    "long_host_label",
    "broken_ipv6",
    "space_in_host",
    "no_host",
    "empty",
    "port_zero",
    "ftp",
)
"""The unfetchable URLs of ``bad_urls`` (see ``images.bad_url``)."""

SUCCESS_5XX_STATUSES: Final = (500, 502, 503)


@attrs.frozen
class Plan:
    """The outcome and modifiers one generate request meets, drawn when it arrives."""

    outcome: str = Fault.NONE
    """``Fault.NONE``, ``TRUNCATED``, ``CUT`` or ``SUCCESS_5XX``."""
    cut: float = 0.5
    """Where a cut body is cut, as a share of its length."""
    status: int = 500
    """The HTTP status of ``SUCCESS_5XX``."""
    gzip: bool = False
    odd: str | None = None
    """Lone surrogates to put in the answer, or None."""
    bad_url: str | None = None
    """One of :data:`BAD_URL_KINDS`, or None."""
    count: str | None = None
    """``"partial"``, ``"extra"`` or None."""
    count_share: float = 0.0
    charge_on_hangup: bool = False

    def url_count(self, num: int) -> int:
        """How many URLs a success for ``num`` images returns."""
        if self.count == "partial" and num >= 2:
            return 1 + min(int(self.count_share * (num - 1)), num - 2)
        if self.count == "extra":
            return num + 1 + min(int(self.count_share * num), num - 1)
        return num


class FaultDraws:
    """The seeded draws of an emulator: the n-th generate request meets the n-th outcome.

    Latency and the plan (:meth:`plan`) have generators of their own, so that turning them
    on does not change which requests drop, 429 or 5xx.
    """

    def __init__(self, seed: int | None) -> None:
        self._fault_random = random.Random(seed)
        self._latency_random = random.Random(None if seed is None else f"latency/{seed}")
        self._plan_random = random.Random(None if seed is None else f"plan/{seed}")

    def latency(self, faults: Faults) -> float:
        latency = faults.latency
        if isinstance(latency, tuple):
            return self._latency_random.uniform(*latency)
        return latency

    def fault(self, faults: Faults) -> str:
        # Always two draws, whatever the outcome, so the n-th request meets the same fault
        # for a given seed whatever the rates and earlier outcomes were.
        pick, detail = self._fault_random.random(), self._fault_random.random()
        if pick < faults.drop_rate:
            after = detail < faults.drop_after_charge_share
            return Fault.DROP_AFTER if after else Fault.DROP_BEFORE
        pick -= faults.drop_rate
        if pick < faults.rate_limit_rate:
            return Fault.RATE_LIMITED
        pick -= faults.rate_limit_rate
        if pick < faults.server_error_rate:
            if detail < faults.html_error_share:
                # Split the non-JSON share between its two forms with the same draw.
                second_half = detail >= faults.html_error_share / 2
                return Fault.EMPTY_503 if second_half else Fault.PROXY_502
            return Fault.JSON_500
        return Fault.NONE

    def plan(self, faults: Faults, fault: str) -> Plan:
        """The newer outcomes and the modifiers of a request whose :meth:`fault` is ``fault``."""
        # Always the same eleven draws, for the same reason as in fault().
        (pick, cut, status, gzip, odd, odd_pick, bad, bad_pick, count, count_share, hangup) = (
            self._plan_random.random() for _ in range(11)
        )
        outcome = Fault.NONE
        if fault == Fault.NONE:
            # Conditional on no older outcome, so each rate stays a share of all requests.
            pick *= 1.0 - (faults.drop_rate + faults.rate_limit_rate + faults.server_error_rate)
            for kind, rate in (
                (Fault.TRUNCATED, faults.truncated_success_rate),
                (Fault.CUT, faults.cut_success_rate),
                (Fault.SUCCESS_5XX, faults.success_as_5xx_rate),
            ):
                if pick < rate:
                    outcome = kind
                    break
                pick -= rate
        shape = None
        if count < faults.partial_rate:
            shape = "partial"
        elif count < faults.partial_rate + faults.extra_rate:
            shape = "extra"
        return Plan(
            outcome=outcome,
            cut=cut,
            status=SUCCESS_5XX_STATUSES[int(status * len(SUCCESS_5XX_STATUSES))],
            gzip=gzip < faults.gzip_rate,
            odd=ODD_TEXTS[int(odd_pick * len(ODD_TEXTS))]
            if odd < faults.odd_unicode_rate
            else None,
            bad_url=(
                BAD_URL_KINDS[int(bad_pick * len(BAD_URL_KINDS))]
                if bad < faults.bad_url_rate
                else None
            ),
            count=shape,
            count_share=count_share,
            charge_on_hangup=hangup < faults.charge_on_hangup_rate,
        )
