"""What one process holds on a namespace: its way to Redis, the reservations it holds and the
settlements it still owes.

Open (:meth:`Holder.open`, the client's ``async with``), a :class:`~.link.Session` keeps one
connection, sends the operations of concurrent tasks together and runs the upkeep: leases of
the reservations held are renewed every third of the lease, and settlements that met an
outage are sent again every half second until Redis answers. Not open, each call connects
in the caller's task and carries the settlements still owed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ...errors import LimitsUnavailableError
from . import scripts
from .coalescing import MAX_OPS
from .config import RedisConfig
from .ledger import Refusals
from .link import UNAVAILABLE, Call, Channel, Script, Session

__all__ = ["ADMIT", "BATCH", "Holder"]

logger = logging.getLogger("nanobanana_async")

ADMIT = "nothing was sent"
_SETTLE = "the attempt's settlement will be sent when Redis answers again"
# How often open limits try again to send settlements that met an outage.
_RESEND_EVERY = 0.5
BATCH = Script.of(scripts.BATCH)
_Ops = list[list[Any]]


class Holder:
    """The connection of one RedisLimits, its reservations held and settlements owed.

    ``header(open)`` is what every operation of a script call shares (``scripts.BATCH``);
    ``verify`` checks a new connection used for admissions, ``durable`` one that creates a
    ledger; ``learn`` gets the cool-down a settlement's reply tells of (microseconds).
    """

    def __init__(
        self,
        config: RedisConfig,
        keys: list[str],
        refusals: Refusals,
        *,
        header: Callable[[bool], list[Any]],
        verify: Callable[[Call], Awaitable[None]],
        durable: Callable[[Call], Awaitable[None]],
        learn: Callable[[int], None],
    ) -> None:
        self._config = config
        self._keys = keys
        self._refusals = refusals
        self._header = header
        self._verify = verify
        self._durable = durable
        self._learn = learn
        self._checked = False  # by a call of limits not open (open ones check each connection)
        self._held: set[str] = set()  # reservations admitted, not yet settled: renewed
        self._unsent: dict[str, list[Any]] = {}  # settlements that met an outage, by id
        self._session: Session | None = None
        self._opens = 0
        self._orphans: list[Session] = []  # stopped from another task, left by their opener

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def failure(self, exc: BaseException, consequence: str) -> LimitsUnavailableError:
        """``exc`` (Redis unreachable, slow, answering an error) as the SDK's error."""
        if isinstance(exc, LimitsUnavailableError):
            return exc
        what = "no answer within the timeout" if isinstance(exc, TimeoutError) else repr(exc)
        return self._refusals.unavailable(what, consequence)

    # -- lifetime ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and verify, then start the session (see ``RedisLimits.open``)."""
        await self._leave_orphans()
        if self._session is not None:
            self._opens += 1
            return
        config = self._config
        channel = Channel(config.target, config.timeout, self._verify)
        try:
            await channel.call("PING")
        except UNAVAILABLE as exc:
            await channel.aclose()
            raise self.failure(exc, ADMIT) from None
        except BaseException:
            await channel.aclose()
            raise
        session = Session(channel, self._send, self.failure, self._upkeep, 2 * config.timeout)
        await session.start()
        self._session, self._opens = session, 1

    async def aclose(self) -> None:
        """Stop the session (what was posted is sent first) when its last opener closes; its
        task group is left now if this is the task that opened it, else when that one does."""
        session = self._session
        if session is not None:
            self._opens -= 1
            if self._opens > 0:
                return
            try:
                await session.stop()  # settlements posted meanwhile still go out
            finally:
                self._session = None
            if self._unsent:
                logger.warning(
                    "shared limits at %s: %d settlement(s) could not be sent; their "
                    "reservations stay held until their leases expire, then count as may "
                    "have been spent",
                    self._config.url,
                    len(self._unsent),
                )
            self._orphans.append(session)
        await self._leave_orphans()

    async def _leave_orphans(self) -> None:
        here = anyio.get_current_task().id
        for session in [s for s in self._orphans if s.opener == here]:
            self._orphans.remove(session)
            await session.leave()

    # -- operations -------------------------------------------------------------------------

    async def _send(self, args: list[Any], count: int) -> list[Any]:
        """The session's way to Redis: ``count`` operations in one script call."""
        session = self._session
        if session is None:
            raise RuntimeError("the limits were closed")
        call = [count, *self._header(True), *args]
        replies: list[Any] = await session.channel.run(BATCH, self._keys, call)
        return replies

    async def ops(self, ops: _Ops, consequence: str = ADMIT) -> list[Any]:
        """``ops`` and their replies: through the session's coalescer, or a connection of
        their own that carries the settlements still owed first. None: a check that Redis
        answers (and, on a new connection, passes ``verify``)."""
        session = self._session
        if session is not None:
            if not ops:
                try:
                    await session.channel.call("PING")
                except UNAVAILABLE as exc:
                    raise self.failure(exc, consequence) from None
                return []
            return [await session.coalescer.submit(op, consequence) for op in ops]
        owed = list(self._unsent.values())
        sent = [*owed, *ops]

        async def verify(call: Call) -> None:
            if not self._checked:
                await self._verify(call)
                self._checked = True

        channel = Channel(self._config.target, self._config.timeout, verify)
        replies: list[Any] = []
        try:
            if sent:
                args = [len(sent), *self._header(False), *(a for op in sent for a in op)]
                replies = await channel.run(BATCH, self._keys, args)
            else:
                await channel.call("PING")
        except UNAVAILABLE as exc:
            raise self.failure(exc, consequence) from None
        finally:
            await channel.aclose()
        for op, reply in zip(owed, replies, strict=False):
            self.settled(op[1], reply)
        return replies[len(owed) :]

    async def admit(self, op: list[Any], *, reserves: bool) -> list[Any]:
        """The reply of the admission ``op``. Cancelled meanwhile, a reservation it made is
        released (open: when its reply comes; not open: its answer is awaited, shielded)."""
        session = self._session
        if session is not None:
            abandoned = functools.partial(self._abandoned, session) if reserves else None
            reply: list[Any] = await session.coalescer.submit(op, ADMIT, abandoned)
            return reply
        if not reserves:
            (reply,) = await self.ops([op])
            return reply
        with anyio.CancelScope(shield=True):
            (reply,) = await self.ops([op])
        return reply

    def hold(self, token: str) -> None:
        """``token`` was reserved by this process: renewed until it is settled."""
        self._held.add(token)

    def _abandoned(self, session: Session, reply: list[Any]) -> None:
        token = str(reply[2])
        if token:
            self._post(session, ["s", token, "release", 0, 0])

    async def settle(self, op: list[Any]) -> None:
        """Send the settlement ``op`` (``"s"``, id, kind, spent, pause_us). Open, it is posted
        (it goes with the next script call), unless it carries a pause: every process must
        see that before its 429 is returned. One that meets an outage is owed, and sent
        again once Redis answers."""
        if not op[4] and self.post(op):
            return
        with anyio.CancelScope(shield=True):
            try:
                (reply,) = await self.ops([op], _SETTLE)
            except LimitsUnavailableError as exc:
                self._unsettled(op, exc)
                raise
        self.settled(op[1] or None, reply)

    def post(self, op: list[Any]) -> bool:
        """Post the settlement ``op`` (open only): it goes with the next script call."""
        session = self._session
        if session is None:
            return False
        self._post(session, op)
        return True

    def _post(self, session: Session, op: list[Any]) -> None:
        on_reply = functools.partial(self.settled, op[1] or None)
        session.coalescer.post(op, _SETTLE, on_reply, functools.partial(self._unsettled, op))

    def settled(self, token: str | None, reply: list[Any]) -> None:
        if token:
            self._held.discard(token)
            self._unsent.pop(token, None)
        self._learn(int(reply[1]))

    def _unsettled(self, op: list[Any], error: LimitsUnavailableError) -> None:
        token = op[1]
        if not token:
            return  # a pause only: kept here (a 429 told the others, or will)
        if not self._unsent:
            logger.warning("%s", error)
        # Sent again without the pause: its Retry-After counted from when Redis hears of it
        # would pause everyone too late and too long.
        self._unsent[token] = [*op[:4], 0]

    def forget(self) -> None:
        """A new ledger: what was held or owed on the old one is gone with it."""
        self._held.clear()
        self._unsent.clear()
        self._checked = False

    async def script(self, script: Script, args: list[Any], *, durable: bool = False) -> Any:
        """A view or an administration script, on a connection of its own (these work
        whatever the ledger; ``durable``: only on a Redis that keeps a ledger), after the
        settlements posted so far."""
        session = self._session
        if session is not None:
            with anyio.move_on_after(2 * self._config.timeout):
                await session.coalescer.drain()
        check = self._durable if durable else _nothing
        channel = Channel(self._config.target, self._config.timeout, check)
        try:
            return await channel.run(script, self._keys, args)
        except UNAVAILABLE as exc:
            raise self.failure(exc, "nothing was changed") from None
        finally:
            await channel.aclose()

    # -- upkeep while open ------------------------------------------------------------------

    async def _upkeep(self) -> None:
        """Renew the leases of reservations held (every third of the lease), and send again
        settlements that met an outage (every half second while there are any)."""
        renew_every = self._config.lease / 3
        renew_at = anyio.current_time() + renew_every
        while True:
            await anyio.sleep(min(_RESEND_EVERY, renew_every))
            if self._unsent:
                with anyio.move_on_after(2 * self._config.timeout):
                    await self._resend()
            if anyio.current_time() >= renew_at:
                renew_at = anyio.current_time() + renew_every
                with anyio.move_on_after(2 * self._config.timeout):
                    await self._renew()

    async def _batches(self, ops: _Ops) -> list[Any]:
        replies: list[Any] = []
        for start in range(0, len(ops), MAX_OPS):
            chunk = ops[start : start + MAX_OPS]
            replies += await self._send([a for op in chunk for a in op], len(chunk))
        return replies

    async def _resend(self) -> None:
        ops = list(self._unsent.values())
        try:
            replies = await self._batches(ops)
        except (*UNAVAILABLE, LimitsUnavailableError, RuntimeError):
            return  # Redis still away: next time
        for op, reply in zip(ops, replies, strict=True):
            self.settled(op[1], reply)
        logger.info(
            "shared limits at %s: %d settlement(s) sent after an outage",
            self._config.url,
            len(ops),
        )

    async def _renew(self) -> None:
        ops = [["r", token] for token in self._held]
        if ops:
            try:
                await self._batches(ops)
            except (*UNAVAILABLE, LimitsUnavailableError, RuntimeError) as exc:
                logger.warning(
                    "shared limits at %s: could not renew leases: %r", self._config.url, exc
                )


async def _nothing(call: Call) -> None:
    """No check: views work on any Redis."""
