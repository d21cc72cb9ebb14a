"""Limits the client consults on every attempt: the 429 cool-down, request starts per second
and a credit budget, kept in this process (:class:`LocalLimits`, the default) or shared by
every process on a Redis namespace (:class:`RedisLimits`, extra ``redis``).

Below the client and the retry loop: they depend on the :class:`Limits` protocol only, and
coredis is imported when a :class:`RedisLimits` is first opened, never with this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Limits, LimitsStatus, Permit, ending
from .budget import CreditBudget
from .cooldown import Cooldown
from .layered import Caps, Layered
from .local import LocalLimits
from .spacing import RateLimiter

if TYPE_CHECKING:
    from .redis import RedisLimits

__all__ = [
    "Caps",
    "Cooldown",
    "CreditBudget",
    "Layered",
    "Limits",
    "LimitsStatus",
    "LocalLimits",
    "Permit",
    "RateLimiter",
    "RedisLimits",
    "ending",
]


def __getattr__(name: str) -> Any:
    if name == "RedisLimits":
        from .redis import RedisLimits

        return RedisLimits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
