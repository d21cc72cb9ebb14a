"""RedisLimits: rate, credit budget and cool-down shared by every process on one namespace."""

from __future__ import annotations

import math
import random
import secrets
from typing import Any, Self

import anyio
import anyio.lowlevel

from ...errors import BudgetExceededError, InvalidRequestError
from ..base import LimitsStatus, Permit, ending
from ..cooldown import Cooldown
from ..spacing import start_interval
from . import scripts
from .config import DEFAULT_LEASE, DEFAULT_NAMESPACE, UNRENEWED_LEASE, RedisConfig, split_url
from .durability import read_durability
from .holder import Holder
from .ledger import Refusals, View
from .link import Call, Script, evaluate
from .scripts import Admission

__all__ = ["RedisLimits"]

_US = 1_000_000
# How late a start slot may be used, and how early: well within the spacing's margin
# (limits.spacing.MARGIN, 50 ms a window). Sleeping for less than a millisecond costs an event
# loop turn per start, which a fast rate would pay for nothing.
_LATE = 0.02
_EARLY = 0.001
# The most a new slot is taken ahead, for an answer that was slow to arrive.
_MAX_LEAD = 1.0
_VIEW = Script.of(scripts.VIEW)
_CREATE = Script.of(scripts.CREATE)


class RedisLimits:
    """Limits shared through Redis by every process and machine using one ``namespace``.

    ``max_per_second`` caps request starts across them all, spaced evenly (no one-second
    window holds more, as measured at Redis's clock); ``max_credits`` is one budget for them
    all, kept in the namespace's credit ledger, which an operator creates once
    (``nanobanana limits create``, :meth:`create`): each attempt reserves its credits under a
    lease of ``lease`` seconds, renewed while the limits are open, so a process killed with
    reservations outstanding loses them to "may have been spent" when the lease expires,
    never back to what is left. A 429 seen by any of them pauses all of them until the
    latest ``Retry-After``. A rate not given is the one last given on the namespace; a
    process given no ``max_credits`` uses the ledger's, if there is one.

    The ledger is refused on a Redis that can lose it (no append-only file, an evicting
    ``maxmemory-policy``) unless ``allow_volatile=True``; a process refuses a ledger that is
    missing or another than the one it used (Redis lost it), and one given another
    ``max_credits`` than the ledger's. Redis unreachable, or slower than ``timeout`` seconds:
    :class:`LimitsUnavailableError` and nothing is sent; never limits of this process
    instead. See docs/scaling.md.

    Every change is one atomic Lua script on Redis's clock. Open (the client's
    ``async with``, or ``async with`` on the limits), the limits keep one connection and send
    the operations of concurrent tasks together; not open, each call connects on its own.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_per_second: float | None = None,
        max_credits: int | None = None,
        lease: float = DEFAULT_LEASE,
        timeout: float = 1.0,
        allow_volatile: bool = False,
    ) -> None:
        self._config = RedisConfig.build(
            url,
            namespace=namespace,
            max_per_second=max_per_second,
            max_credits=max_credits,
            lease=lease,
            timeout=timeout,
            allow_volatile=allow_volatile,
        )
        self._refusals = Refusals(self._config)
        tag = "nanobanana:{" + namespace + "}"
        self._keys = [f"{tag}:state", f"{tag}:leases"]
        self._interval_us = math.ceil(start_interval(max_per_second) * _US) if max_per_second else 0
        self._per_second_text = format(max_per_second, "g") if max_per_second else ""
        self._lease_us = math.ceil(self._config.lease * _US)
        self._unrenewed_lease_us = math.ceil(max(self._config.lease, UNRENEWED_LEASE) * _US)
        # The ledger this process uses ("" until it sees one) and the last reservation number
        # it saw there: a different ledger, or an older copy, is refused.
        self._ledger = ""
        self._seq = 0
        # A copy of the shared cool-down: waited out here without asking Redis, and kept if
        # Redis forgets it.
        self._cooldown = Cooldown()
        self._holder = Holder(
            self._config,
            self._keys,
            self._refusals,
            header=self._header,
            verify=self._verify,
            durable=self._check_durable,
            learn=self._learn,
        )

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Self:
        """Limits from one URL whose query may carry the options:
        ``redis://host:6379/0?namespace=acct&max_per_second=20&max_credits=5000``
        (also ``lease``, ``timeout`` and ``allow_volatile``, and the connection's ``db``,
        ``username``, ``password``, ``client_name`` and ``ssl_*``). Any other option is
        refused, naming these."""
        clean, options = split_url(url)
        options.update(overrides)
        return cls(clean, **options)

    def __repr__(self) -> str:
        config = self._config
        return (
            f"RedisLimits({config.url!r}, namespace={config.namespace!r}, "
            f"max_per_second={config.max_per_second!r}, max_credits={config.max_credits!r})"
        )

    @property
    def url(self) -> str:
        """Where the limits live, without password or options."""
        return self._config.url

    @property
    def namespace(self) -> str:
        """The namespace shared by the processes whose limits these are."""
        return self._config.namespace

    @property
    def max_per_second(self) -> float | None:
        """The rate this process was given (None: the namespace's)."""
        return self._config.max_per_second

    @property
    def max_credits(self) -> int | None:
        """The budget this process was given (None: the ledger's, if any)."""
        return self._config.max_credits

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check (persistence for a budget, the ledger), then keep the connection
        and the upkeep running until :meth:`aclose`, which the same task must call (the
        client's ``async with`` does). Raises :class:`LimitsUnavailableError` when Redis
        cannot be reached or refuses."""
        await self._holder.open()

    async def aclose(self) -> None:
        """Send the settlements posted so far (a few seconds at most), stop the upkeep and
        close the connection; the limits may be opened again."""
        await self._holder.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def check(self) -> None:
        """Raise :class:`LimitsUnavailableError` now if these limits cannot admit anything
        (Redis unreachable or refusing): what a batch asks once before its first job."""
        await self._holder.ops([])

    # -- what Redis is told, and what is checked ---------------------------------------------

    def _header(self, open_: bool) -> list[Any]:
        """What every operation of a script call shares (see ``scripts.BATCH``)."""
        lease = self._lease_us if open_ else self._unrenewed_lease_us
        return [self._ledger, self._seq, self._interval_us, lease, self._per_second_text]

    async def _verify(self, call: Call) -> None:
        """Check a new connection: persistence where a budget is used, the ledger's identity
        and cap (:mod:`.ledger`)."""
        view = View(await evaluate(call, _VIEW, self._keys, []))
        if self._config.max_credits is not None or view.ledger or self._ledger:
            await self._check_durable(call)
        refusals = self._refusals
        if self._ledger and view.ledger != self._ledger:
            raise refusals.lost(older=False)
        if self._ledger and view.seq < self._seq:
            raise refusals.lost(older=True)
        if self._config.max_credits is not None:
            if not view.ledger:
                raise refusals.no_ledger()
            if view.max_credits != self._config.max_credits:
                raise refusals.other_cap(view.max_credits)
        self._ledger = view.ledger

    async def _check_durable(self, call: Call) -> None:
        if not self._config.allow_volatile:
            durability = await read_durability(call)
            if durability.problem is not None:
                raise self._refusals.volatile(durability)

    def _learn(self, cooldown_us: int) -> None:
        if cooldown_us > 0:
            self._cooldown.pause(cooldown_us / _US)

    # -- the protocol -----------------------------------------------------------------------

    async def acquire(self, cost: int) -> Permit:
        """Wait out the shared cool-down, reserve ``cost``, take the next start slot."""
        poll = 0.02
        waited = 0.0
        while True:
            waited += await self._cooldown.wait()
            asked = anyio.current_time()
            status, value, token = await self._admit(cost)
            answered = anyio.current_time()
            if status == Admission.ADMITTED:
                permit = Permit(cost if token else 0, token or None, cooldown=waited)
                try:
                    permit.cooldown += await self._start_at(asked, answered, value)
                except BaseException:
                    await self._settle(permit, "release", 0, 0)
                    raise
                return permit
            if status == Admission.COOLING:
                self._cooldown.pause(value / _US)
            elif status == Admission.WAIT:
                await anyio.sleep(poll * (0.5 + random.random()))
                poll = min(poll * 2, 0.25)
            elif status == Admission.NEVER:
                raise BudgetExceededError(
                    f"the shared max_credits of namespace {self.namespace!r} at {self.url} has "
                    f"no room for {cost} credits ({max(0, value)} left): nothing was sent"
                )
            else:
                raise self._refusals.lost(older=value == 1)

    async def _admit(self, cost: int, *, lead: float = 0.0) -> tuple[int, int, str]:
        reply = await self._holder.admit(["a", cost, math.ceil(lead * _US)], reserves=cost > 0)
        status, value, token = self._admitted(reply)
        if token:
            # Cancelled while the answer came: released now, before any attempt is made.
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                await self._settle(Permit(cost, token), "release", 0, 0)
                raise
        return status, value, token

    def _admitted(self, reply: list[Any]) -> tuple[int, int, str]:
        status, value, token = int(reply[0]), int(reply[1]), str(reply[2])
        if token:
            self._holder.hold(token)
            ledger, seq, _ = token.split(":")
            self._ledger = self._ledger or ledger
            self._seq = max(self._seq, int(seq))
        return status, value, token

    async def _start_at(self, asked: float, answered: float, wait_us: int) -> float:
        """Start at the slot ``wait_us`` after Redis's clock read it (between ``asked`` and
        ``answered``); returns the seconds spent waiting out a cool-down meanwhile.

        A start is never more than 1 ms before its slot. A slot queued for (more than 20 ms
        ahead: the cap binds, slots are taken back to back) must be used within 20 ms of it,
        or it is left unused and a new one taken, far enough ahead for its answer to arrive
        first: a later start (a slow answer, a process starved of CPU) would crowd the slots
        after it, in other processes too.

        A 429 seen by another process may pause everyone after Redis admitted this attempt:
        a start more than one round trip after the admission asks Redis again whether a
        cool-down runs; if one does, the slot is left, the cool-down waited out, a new slot
        taken (the reservation already held stays).
        """
        cooled = 0.0
        while True:
            if wait_us > _EARLY * _US:
                await anyio.sleep(wait_us / _US)  # from the answer: never before the slot
            now = anyio.current_time()
            late = wait_us > _LATE * _US and now - (asked + wait_us / _US) > _LATE
            if not late and now - answered <= max(answered - asked, 0.001):
                return cooled  # Redis looked at the cool-down at most a round trip ago
            if not late:
                if not self._cooldown.paused():
                    (left,) = await self._holder.ops([["c"]])
                    if not left:
                        return cooled
                    self._cooldown.pause(int(left) / _US)
                cooled += await self._cooldown.wait()
            lead = min(_MAX_LEAD, 2 * (answered - asked) + _LATE)
            while True:  # a new slot
                asked = anyio.current_time()
                status, wait_us, _ = await self._admit(0, lead=lead)
                answered = anyio.current_time()
                if status == Admission.ADMITTED:
                    break
                if status == Admission.LOST:
                    raise self._refusals.lost(older=wait_us == 1)
                self._cooldown.pause(wait_us / _US)
                cooled += await self._cooldown.wait()

    async def settle(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> None:
        """End ``permit``'s attempt (none when nothing was reserved and no 429 asks for a
        pause). Open limits post it (it goes with the next script call), unless a 429 asks
        for a pause: that is in Redis before this returns, so that every process sees it. A
        settlement that meets an outage is sent again once Redis answers."""
        pause_us = math.ceil(pause * _US) if pause is not None and pause > 0 else 0
        if pause_us:
            self._cooldown.pause(pause_us / _US)
        await self._settle(permit, _kind(spent, outcome), spent or 0, pause_us)

    def settle_now(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> bool:
        """:meth:`settle` where it awaits nothing (open limits, no pause): True when done,
        False when :meth:`settle` must be awaited. The retry loop's way around a shielded
        await per attempt."""
        if pause is not None and pause > 0:
            return False
        token = None if permit.settled else permit.token
        if token is None:
            permit.settled = True
            return True
        if not self._holder.post(["s", token, _kind(spent, outcome), spent or 0, 0]):
            return False
        permit.settled = True
        return True

    async def _settle(self, permit: Permit, kind: str, spent: int, pause_us: int) -> None:
        token = None if permit.settled else permit.token
        permit.settled = True
        if token is not None or pause_us:
            await self._holder.settle(["s", token or "", kind, spent, pause_us])

    # -- views and administration -----------------------------------------------------------

    async def status(self) -> LimitsStatus:
        """The namespace's caps, credits by state, cool-down and ledger, as Redis has them."""
        view = View(await self._holder.script(_VIEW, []))
        return LimitsStatus(
            max_per_second=view.max_per_second,
            max_credits=view.max_credits,
            spent=view.spent,
            uncertain=view.uncertain,
            reserved=view.reserved,
            cooldown=view.cooldown_us / _US,
            in_flight=view.leases,
            ledger=view.ledger or None,
        )

    async def create(self, *, replace: bool = False) -> str:
        """Create the namespace's credit ledger with this object's ``max_credits`` (and rate,
        if given); returns its identity. Processes using the namespace's budget run against
        it from then on. Refused where a ledger exists, unless ``replace``: then the old one
        is dropped with its reservations, and processes that used it refuse to go on until
        started again. Refused, like any budget, on a Redis that can lose it."""
        cap = self._config.max_credits
        if cap is None:
            raise InvalidRequestError(
                "creating a credit ledger needs max_credits (in the URL: ?max_credits=N)",
                param="max_credits",
            )
        ledger, _ = await self._create(cap, replace=replace)
        return ledger

    async def reset(self) -> int:
        """Start a new ledger in place of the namespace's: spent, reserved and the cool-down
        go back to zero, the cap stays (or becomes this object's ``max_credits``). Returns
        how many reservations were outstanding; processes that used the old ledger refuse to
        go on until started again."""
        cap = self._config.max_credits
        _, outstanding = await self._create(-1 if cap is None else cap, replace=True)
        return outstanding

    async def _create(self, cap: int, *, replace: bool) -> tuple[str, int]:
        ledger = secrets.token_hex(8)
        args = [ledger, cap, "1" if replace else "0", self._interval_us, self._per_second_text]
        made, ledger, outstanding = await self._holder.script(_CREATE, args, durable=True)
        if not made and not ledger:
            raise InvalidRequestError(
                f"namespace {self.namespace!r} at {self.url} has no credit ledger to reset: "
                "create one (`nanobanana limits create`, with max_credits)",
                param="max_credits",
            )
        if not made:
            raise InvalidRequestError(
                f"namespace {self.namespace!r} at {self.url} already has a credit ledger "
                f"({ledger}): `nanobanana limits create --replace` starts a new one (what "
                "was spent is forgotten)",
                param="max_credits",
            )
        self._ledger, self._seq = str(ledger), 0
        self._holder.forget()
        self._cooldown = Cooldown()
        return str(ledger), int(outstanding)


def _kind(spent: int | None, outcome: BaseException | None) -> str:
    """How an attempt's reservation ends (the money rule, :func:`ending`), as the settlement
    script reads it."""
    return ending(spent, outcome)
