"""What goes wrong on the emulator, and how often: :class:`Faults` and the seeded draws."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final

import attrs

__all__ = ["FAULT_KINDS", "Fault", "FaultDraws", "Faults", "parse_latency"]

FAULT_KINDS: Final = (
    "server_error_json",
    "server_error_html",
    "rate_limited",
    "dropped_before_charge",
    "dropped_after_charge",
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


class Fault:
    """The outcomes a generate request can be given."""

    NONE = "none"
    JSON_500 = "server_error_json"
    PROXY_502 = "proxy_502"
    EMPTY_503 = "empty_503"
    RATE_LIMITED = "rate_limited"
    DROP_BEFORE = "dropped_before_charge"
    DROP_AFTER = "dropped_after_charge"


class FaultDraws:
    """The seeded draws of an emulator: the n-th generate request meets the n-th outcome.

    Latency has its own generator so that turning it on does not change which requests fail.
    """

    def __init__(self, seed: int | None) -> None:
        self._fault_random = random.Random(seed)
        self._latency_random = random.Random(None if seed is None else f"latency/{seed}")

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
