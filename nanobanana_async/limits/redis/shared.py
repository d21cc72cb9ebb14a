"""RedisLimits: rate, credit budget and cool-down shared by every process on one namespace."""

from __future__ import annotations

import importlib.util
import math
import random
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel

from ...errors import BudgetExceededError, InvalidRequestError, may_have_charged
from ..base import LimitsStatus, Permit
from ..cooldown import Cooldown
from ..spacing import start_interval
from . import scripts
from .config import RedisConfig
from .scripts import Admission

if TYPE_CHECKING:
    from .connection import RedisConnection, Scripts

__all__ = ["RedisLimits"]

_US = 1_000_000
# How late a start slot may be used: well within the spacing's margin (limits.spacing.MARGIN).
_LATE = 0.02
# The most a new slot is taken ahead, for an answer that was slow to arrive.
_MAX_LEAD = 1.0
# Admissions and settlements go through the coalescer (one round trip for many).
_BATCHED = {"acquire": "a", "settle": "s"}
_CONSEQUENCES = {
    "acquire": "nothing was sent",
    "settle": "the attempt's reservation stays held until its lease expires, then counts as "
    "may have been spent",
}
_scripts: Scripts | None = None


def _loaded() -> Scripts:
    global _scripts
    if _scripts is None:
        from .connection import Scripts

        _scripts = Scripts(scripts.BATCH, scripts.STATUS, scripts.RESET)
    return _scripts


class RedisLimits:
    """Limits shared through Redis by every process and machine using one ``namespace``.

    ``max_per_second`` caps request starts across them all, spaced evenly (no one-second
    window holds more, as measured at Redis's clock); ``max_credits`` is one budget for them
    all: each attempt reserves its credits under a lease of ``lease`` seconds, and a process
    killed with reservations outstanding loses them to "may have been spent" when the lease
    expires, never back to what is left. A 429 seen by any of them pauses all of them until
    the latest ``Retry-After``. A cap not given is the one last given on the namespace.

    Every change is one atomic Lua script on Redis's clock: one round trip admits an attempt
    (cool-down, budget, rate), one settles it (none without a budget, unless a 429 pauses).
    Redis unreachable, or slower than ``timeout`` seconds: :class:`LimitsUnavailableError`
    and nothing is sent; never limits of this process instead. Needs the extra ``redis``
    (coredis), imported when the limits are first opened.

    The connection pool opens with the client's ``async with`` (or at the first call) and
    closes with the client; :meth:`open` / :meth:`aclose` (or ``async with``) when used alone.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        max_per_second: float | None = None,
        max_credits: int | None = None,
        lease: float = 600.0,
        timeout: float = 1.0,
    ) -> None:
        self._config = RedisConfig.build(
            url, namespace, max_per_second, max_credits, lease, timeout
        )
        if importlib.util.find_spec("coredis") is None:
            raise InvalidRequestError(
                "RedisLimits needs coredis: pip install 'nanobanana-async[redis]'", param="url"
            )
        tag = "nanobanana:{" + namespace + "}"
        self._keys = [f"{tag}:state", f"{tag}:leases", f"{tag}:costs"]
        self._interval_us = math.ceil(start_interval(max_per_second) * _US) if max_per_second else 0
        self._cap = -1 if max_credits is None else max_credits
        self._lease_us = math.ceil(self._config.lease * _US)
        self._per_second_text = format(max_per_second, "g") if max_per_second else ""
        self._reserved_before = False
        # A copy of the shared cool-down: waited out here without asking Redis, and kept if
        # Redis forgets it.
        self._cooldown = Cooldown()
        self._connection: RedisConnection | None = None
        # Opened explicitly (the client's async with): settlements are posted, and the close
        # sends them. Opened on first use (never closed, maybe): they are awaited.
        self._opened = False

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Self:
        """Limits from one URL whose query may carry the options:
        ``redis://host:6379/0?namespace=acct&max_per_second=20&max_credits=5000``
        (also ``lease`` and ``timeout``). ``namespace`` defaults to ``"nanobanana"``."""
        clean, options = RedisConfig.split_url(url)
        options.setdefault("namespace", "nanobanana")
        options.update(overrides)
        return cls(clean, **options)

    def __repr__(self) -> str:
        config = self._config
        return (
            f"RedisLimits({config.safe_url!r}, namespace={config.namespace!r}, "
            f"max_per_second={config.max_per_second!r}, max_credits={config.max_credits!r})"
        )

    @property
    def url(self) -> str:
        """Where the limits live, without credentials."""
        return self._config.safe_url

    @property
    def namespace(self) -> str:
        """The namespace shared by the processes whose limits these are."""
        return self._config.namespace

    # -- lifetime ---------------------------------------------------------------------------

    def _open_connection(self) -> RedisConnection:
        connection = self._connection
        if connection is None or connection.done:
            from .connection import RedisConnection

            connection = self._connection = RedisConnection(self._config, _loaded(), self._keys)
        return connection

    async def open(self) -> None:
        """Start the connection pool's owner task (connecting lazily: Redis may be down)."""
        self._open_connection()
        self._opened = True

    async def aclose(self) -> None:
        """Close the connection pool; the limits open again when next used."""
        connection, self._connection = self._connection, None
        self._opened = False
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, script_name: str, args: list[Any]) -> Any:
        consequence = _CONSEQUENCES.get(script_name, "nothing was changed")
        connection = self._open_connection()
        if script_name in _BATCHED:
            operation = [_BATCHED[script_name], *args]
            return await connection.submit(operation, consequence)
        await connection.flush()  # a view or a reset sees every settlement posted before it
        script = getattr(_loaded(), script_name)
        return await connection.call(script, self._keys, args, consequence)

    # -- the protocol -----------------------------------------------------------------------

    async def acquire(self, cost: int) -> Permit:
        """Wait out the shared cool-down, reserve ``cost``, take the next start slot."""
        poll = 0.02
        waited = 0.0
        while True:
            waited += await self._cooldown.wait()
            asked = anyio.current_time()
            status, value, token = await self._admit(cost, reserve_check=True)
            answered = anyio.current_time()
            permit = Permit(cost if token else 0, token or None, cooldown=waited)
            if status == Admission.ADMITTED:
                if token:
                    self._reserved_before = True
                try:
                    await self._start_at(asked, answered, value)
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
                raise self._open_connection().unavailable(
                    "the namespace's credit ledger is gone (Redis restarted without "
                    "persistence, or its keys were deleted), so what was spent is unknown",
                    "nothing was sent; start a new ledger with `nanobanana limits reset`",
                )

    async def _admit(
        self, cost: int, *, reserve_check: bool, lead: float = 0.0
    ) -> tuple[int, int, str]:
        args = [
            cost,
            self._cap,
            self._interval_us,
            self._lease_us,
            1 if reserve_check and self._reserved_before else 0,
            self._per_second_text,
            math.ceil(lead * _US),
        ]
        if cost <= 0:  # nothing can be reserved
            status, value, token = await self._call("acquire", args)
            return status, value, token
        # Shielded: a reservation made by a script whose answer we stopped waiting for would
        # be held until its lease expired. Cancellation is seen right after the answer.
        with anyio.CancelScope(shield=True):
            status, value, token = await self._call("acquire", args)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if token:
                await self._settle(Permit(cost, token), "release", 0, 0)
            raise
        return status, value, token

    async def _start_at(self, asked: float, answered: float, wait_us: int) -> None:
        """Start at the slot ``wait_us`` after Redis's clock read it (between ``asked`` and
        ``answered``).

        A slot queued for (more than 20 ms ahead: the cap binds, slots are taken back to
        back) must be used within 20 ms of it, or it is left unused and a new one taken, far
        enough ahead for its answer to arrive first: a later start (a slow answer, a process
        starved of CPU) would crowd the slots after it, in other processes too. A slot free
        within 20 ms (the cap does not bind) starts when it comes.
        """
        while wait_us > _LATE * _US:  # -1: the namespace has no rate cap
            await anyio.sleep(wait_us / _US)  # from the answer: never before the slot
            if anyio.current_time() - (asked + wait_us / _US) <= _LATE:
                return
            lead = min(_MAX_LEAD, 2 * (answered - asked) + _LATE)
            while True:  # a new slot; the reservation already held stays
                asked = anyio.current_time()
                status, wait_us, _ = await self._admit(0, reserve_check=False, lead=lead)
                answered = anyio.current_time()
                if status != Admission.COOLING:
                    break
                self._cooldown.pause(wait_us / _US)
                await self._cooldown.wait()
        if wait_us > 0:
            await anyio.sleep(wait_us / _US)

    async def settle(
        self,
        permit: Permit,
        *,
        spent: int | None = None,
        outcome: BaseException | None = None,
        pause: float | None = None,
    ) -> None:
        """End ``permit``'s attempt in one round trip (none when nothing was reserved and no
        429 asks for a pause)."""
        pause_us = math.ceil(pause * _US) if pause is not None and pause > 0 else 0
        if pause_us:
            self._cooldown.pause(pause_us / _US)
        if spent is not None:
            kind = "spent"
        elif outcome is not None and may_have_charged(outcome):
            kind = "keep"
        else:
            kind = "release"
        await self._settle(permit, kind, spent or 0, pause_us)

    async def _settle(self, permit: Permit, kind: str, spent: int, pause_us: int) -> None:
        token = None if permit.settled else permit.token
        permit.settled = True
        if token is None and not pause_us:
            return
        args = [token or "", kind, spent, pause_us]
        if self._opened:
            # Posted: the call's outcome does not wait for the ledger's round trip. It goes
            # out with the next batch and before the pool closes; one that never reaches Redis
            # (a crash) keeps its reservation until the lease expires (may have been spent).
            self._open_connection().post(["s", *args], _CONSEQUENCES["settle"], self._learn)
            return
        with anyio.CancelScope(shield=True):
            self._learn(await self._call("settle", args))

    def _learn(self, reply: Any) -> None:
        cooldown_us = reply[1]
        if cooldown_us > 0:
            self._cooldown.pause(cooldown_us / _US)

    # -- views ------------------------------------------------------------------------------

    async def status(self) -> LimitsStatus:
        """The namespace's caps, credits by state and cool-down, as Redis has them now."""
        _, spent, uncertain, reserved, cap, per_second, cooldown_us, leases = await self._call(
            "status", []
        )
        return LimitsStatus(
            max_per_second=float(per_second) if per_second else None,
            max_credits=None if cap < 0 else cap,
            spent=spent,
            uncertain=uncertain,
            reserved=reserved,
            cooldown=cooldown_us / _US,
            in_flight=leases,
        )

    async def reset(self) -> int:
        """Start a new ledger: spent, reserved and the cool-down go back to zero (the caps
        stay). Returns how many reservations were outstanding (their attempts, if still
        running, are no longer counted)."""
        self._reserved_before = False
        self._cooldown = Cooldown()
        outstanding: int = await self._call("reset", [])
        return outstanding
