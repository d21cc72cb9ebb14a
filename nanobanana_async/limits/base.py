"""The protocol the client consults on every attempt, and what it hands back."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import attrs

from ..errors import may_have_charged

__all__ = ["Ending", "Limits", "LimitsStatus", "Permit", "ending"]

Ending = Literal["spent", "keep", "release"]


def ending(spent: int | None, outcome: BaseException | None) -> Ending:
    """How an attempt's reservation ends: the money rule, for every ledger that keeps one.

    Every attempt that may be charged holds a reservation of its own. It is ``"spent"`` when
    the attempt generated (``spent`` credits: the rest of it is released), ``"keep"`` (may have
    been spent) when it ended with an ``outcome`` after which the server may have charged (a
    connection lost after sending, an unreadable success body, a cancellation:
    :func:`~nanobanana_async.errors.may_have_charged`), and ``"release"`` when it cannot have
    charged (a clear error answer, a request that never left, an attempt never sent). A budget
    is therefore never exceeded, whatever the server did with a request whose answer was lost.
    """
    if spent is not None:
        return "spent"
    if outcome is not None and may_have_charged(outcome):
        return "keep"
    return "release"


@attrs.define(eq=False, slots=True)
class Permit:
    """One attempt admitted by :class:`Limits`: ``cost`` credits reserved for it (0 when no
    budget applies) under the back end's ``token``, until it is settled. ``cooldown`` is how
    long it waited out a 429 cool-down before it was admitted (seconds)."""

    cost: int = 0
    token: str | None = None
    settled: bool = False
    cooldown: float = 0.0


@runtime_checkable
class Limits(Protocol):
    """What :class:`~nanobanana_async.AsyncNanoBanana` consults around every attempt of every
    call (a single ``generate``, each job of a batch, each retry).

    For each attempt the client awaits :meth:`acquire` (wait out a 429 cool-down, reserve the
    attempt's credits, admit its start under the rate cap) and then exactly one
    :meth:`settle`. ``open`` / ``aclose`` follow the client's ``async with``.
    :class:`~nanobanana_async.LocalLimits` (the default) keeps them in this process,
    :class:`~nanobanana_async.RedisLimits` shares them across processes and machines.

    Two methods are optional. ``async check()`` raises when nothing could be admitted now (a
    batch asks once, before its first job, and fails as a whole instead of per job);
    ``settle_now(permit, ...) -> bool`` settles without awaiting when it can (True), which
    spares the retry loop a shielded await per attempt.
    """

    async def open(self) -> None:
        """Get ready (the client's ``async with``); using the limits unopened may open them."""
        ...

    async def aclose(self) -> None:
        """Release what :meth:`open` took. The limits may be opened again."""
        ...

    async def acquire(self, cost: int) -> Permit:
        """Return when an attempt costing up to ``cost`` credits may start now.

        Waits out any cool-down, reserves ``cost`` (raising
        :class:`~nanobanana_async.BudgetExceededError` when it can never fit), then waits for
        the attempt's turn under the rate cap. Raises
        :class:`~nanobanana_async.LimitsUnavailableError` when the limits cannot be
        consulted; nothing may be sent then.
        """
        ...

    async def settle(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> None:
        """End ``permit``'s attempt: it generated, charging ``spent`` credits (the rest of the
        reservation is released); or it ended with ``outcome`` (the reservation is kept as
        may-have-been-spent when :func:`~nanobanana_async.errors.may_have_charged` says the
        server may have charged, released otherwise); or neither: it was never sent
        (released). ``pause``: the server asked every request to wait that many seconds
        (a 429's ``Retry-After``)."""
        ...


@attrs.frozen
class LimitsStatus:
    """A snapshot of limits: the caps, credits by state and any cool-down.

    ``max_per_second`` / ``max_credits`` are ``None`` when not capped. ``spent`` are credits of
    attempts that generated; ``uncertain`` are kept for attempts whose answer was lost (or
    whose holder died: an expired lease), so they may have been spent; ``reserved`` are held by
    attempts in flight; ``left`` is what remains of ``max_credits``. ``ledger`` is the identity
    of a shared credit ledger (:class:`~nanobanana_async.RedisLimits`), None without one.
    """

    max_per_second: float | None
    max_credits: int | None
    spent: int
    uncertain: int
    reserved: int
    cooldown: float
    in_flight: int = 0
    ledger: str | None = None

    @property
    def left(self) -> int | None:
        """Credits neither committed nor reserved (``None`` without ``max_credits``)."""
        if self.max_credits is None:
            return None
        return max(0, self.max_credits - self.spent - self.uncertain - self.reserved)
