"""The numbers a user passes (counts, credits, rates, seconds): checked here, refused in one
wording.

Each rule has two forms: ``*_problem(value)`` says what is wrong ("must be an integer >= 1,
got 0") or None, for callers that word the error themselves (a job's field, a URL's option);
the plain form raises :class:`InvalidRequestError` naming the parameter. A ``bool`` is never a
number here (``True`` is an ``int`` to Python, never a concurrency to a user), NaN never
passes, and infinity only where a rule says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .errors import InvalidRequestError

__all__ = [
    "positive",
    "positive_problem",
    "seconds",
    "seconds_problem",
    "validator",
    "whole",
    "whole_problem",
]

T = TypeVar("T")


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


def _problem(rule: str, value: object, none: bool) -> str:
    return f"must be {rule}{' or None' if none else ''}, got {value!r}"


def whole_problem(value: object, minimum: int, *, none: bool = False) -> str | None:
    """What is wrong with ``value`` as a whole number >= ``minimum`` (None: nothing)."""
    if value is None and none:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return None
    return _problem(f"an integer >= {minimum}", value, none)


def positive_problem(value: object, *, unit: str = "number", none: bool = False) -> str | None:
    """What is wrong with ``value`` as a positive finite number (None: nothing)."""
    if value is None and none:
        return None
    if _is_number(value) and 0 < value < math.inf:  # type: ignore[operator]
        return None
    return _problem(f"a positive {unit}", value, none)


def seconds_problem(value: object, *, infinite: bool = False) -> str | None:
    """What is wrong with ``value`` as seconds >= 0 (``infinite``: no limit is allowed too)."""
    if _is_number(value) and value >= 0 and (infinite or value < math.inf):  # type: ignore[operator]
        return None
    return _problem("seconds >= 0", value, False)


def _raise(name: str, problem: str) -> None:
    raise InvalidRequestError(f"{name} {problem}", param=name)


def whole(value: T, name: str, *, minimum: int, none: bool = False) -> T:
    """``value``, when it is a whole number >= ``minimum`` (or None, with ``none``)."""
    problem = whole_problem(value, minimum, none=none)
    if problem is not None:
        _raise(name, problem)
    return value


def positive(value: T, name: str, *, unit: str = "number", none: bool = False) -> T:
    """``value``, when it is a positive finite number (or None, with ``none``)."""
    problem = positive_problem(value, unit=unit, none=none)
    if problem is not None:
        _raise(name, problem)
    return value


def seconds(value: T, name: str, *, infinite: bool = False) -> T:
    """``value``, when it is seconds >= 0 (infinity too, with ``infinite``)."""
    problem = seconds_problem(value, infinite=infinite)
    if problem is not None:
        _raise(name, problem)
    return value


def validator(check: Callable[..., Any], **rule: Any) -> Callable[[Any, Any, Any], None]:
    """An attrs validator applying ``check`` with ``rule`` under the attribute's name."""

    def validate(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(value, attribute.name, **rule)

    return validate
