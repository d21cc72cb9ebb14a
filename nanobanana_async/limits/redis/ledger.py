"""The rules that keep a shared budget true: which Redis may hold a ledger, and which ledger a
process may use. Each refusal is one line saying what is wrong and what to do.

- A budget (a process given ``max_credits``, or a namespace that has a ledger) is refused on a
  Redis that can lose the ledger (:mod:`.durability`) unless ``allow_volatile`` accepts it.
- A ledger is made only by an operator (``nanobanana limits create``, ``RedisLimits.create``):
  a process given ``max_credits`` that finds none refuses, so a ledger Redis lost is never
  taken for a new one; a process given another ``max_credits`` than the ledger's refuses.
- A process remembers the ledger it used (its identity) and the last reservation number it
  saw there, and refuses a ledger that is missing, another one, or older (restored from an
  older copy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import LimitsUnavailableError, redact
from .config import RedisConfig

if TYPE_CHECKING:
    from .durability import Durability

__all__ = ["Refusals", "View"]


class View:
    """The namespace as the ``VIEW`` script reads it."""

    __slots__ = (
        "cooldown_us",
        "leases",
        "ledger",
        "max_credits",
        "max_per_second",
        "reserved",
        "seq",
        "spent",
        "uncertain",
    )

    def __init__(self, reply: list[object]) -> None:
        ledger, cap, spent, uncertain, reserved, per_second, cool, leases, seq = reply
        self.ledger = str(ledger)
        self.max_credits = None if int(str(cap)) < 0 else int(str(cap))
        self.spent, self.uncertain, self.reserved = (
            int(str(spent)),
            int(str(uncertain)),
            int(str(reserved)),
        )
        self.max_per_second = float(str(per_second)) if per_second else None
        self.cooldown_us, self.leases, self.seq = int(str(cool)), int(str(leases)), int(str(seq))


class Refusals:
    """The messages of one RedisLimits (its URL and namespace, never its password)."""

    def __init__(self, config: RedisConfig) -> None:
        self._config = config

    def unavailable(self, why: str, consequence: str) -> LimitsUnavailableError:
        config = self._config
        message = redact(
            f"shared limits unavailable at {config.url} (namespace {config.namespace!r}): "
            f"{why}; {consequence}",
            config.password,
        )
        return LimitsUnavailableError(message, url=config.url)

    def volatile(self, durability: Durability) -> LimitsUnavailableError:
        return self.unavailable(
            f"a credit budget is refused on this Redis: {durability.problem}",
            f"nothing was sent; {durability.fix}, or accept that risk with allow_volatile=True "
            "(?allow_volatile=1 in the URL; see docs/scaling.md)",
        )

    def no_ledger(self) -> LimitsUnavailableError:
        return self.unavailable(
            f"the namespace has no credit ledger for max_credits={self._config.max_credits} "
            "(never created, or Redis lost it: a ledger is only made by an operator)",
            "nothing was sent; create it once: `nanobanana limits create` with the same "
            "--limits URL (or RedisLimits.create())",
        )

    def other_cap(self, cap: int | None) -> LimitsUnavailableError:
        return self.unavailable(
            f"the namespace's credit ledger has max_credits={cap}, this process was given "
            f"max_credits={self._config.max_credits}",
            "nothing was sent; give every process the ledger's max_credits, or start a new "
            "ledger with `nanobanana limits create --replace`",
        )

    def lost(self, *, older: bool) -> LimitsUnavailableError:
        why = (
            "the credit ledger this process uses went back in time (Redis restored an older "
            "copy), so what was spent since is unknown"
            if older
            else "the credit ledger this process uses is gone or was replaced (Redis lost its "
            "keys: a restart without persistence, eviction, a flush; or a new ledger was "
            "created), so what was spent is unknown"
        )
        return self.unavailable(
            why,
            "nothing was sent; check what the account was charged, create a new ledger "
            "(`nanobanana limits create`) and start this process again",
        )
