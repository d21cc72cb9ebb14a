"""One round trip for many: the admissions and settlements that the tasks of one process ask
for while a call to Redis is in flight go together in the next one.

A batch at concurrency 128 asks for hundreds of admissions and settlements a second; each
script call costs this process and Redis tens of microseconds whatever it carries, which a
busy event loop does not have. The coalescer sends whatever is waiting as one script call
(``scripts.BATCH``) as soon as the previous one answered: a lone admission goes out at once,
a crowd shares a round trip. Settlements nobody waits for linger a few milliseconds for the
next admission to take them along (a job's settlement is followed by the next job's
admission), so a busy batch pays about one call per attempt, not two. Operations keep their
order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ...errors import LimitsUnavailableError

__all__ = ["Coalescer"]

# Operations per script call at most (ARGV stays small; Lua's unpack has limits).
MAX_OPS = 256
# How long settlements alone wait for an admission to go with.
LINGER = 0.005

Send = Callable[[list[Any], int], Awaitable[list[Any]]]
Failure = Callable[[BaseException, str], LimitsUnavailableError]


class _Op:
    __slots__ = (
        "abandoned",
        "args",
        "consequence",
        "done",
        "error",
        "on_abandoned",
        "on_error",
        "on_reply",
        "reply",
    )

    def __init__(
        self,
        args: list[Any],
        consequence: str,
        on_reply: Callable[[Any], None] | None = None,
        on_error: Callable[[LimitsUnavailableError], None] | None = None,
        on_abandoned: Callable[[Any], None] | None = None,
    ) -> None:
        self.args = args
        self.consequence = consequence
        # Only a caller that waits needs an event (costly to make: one per operation).
        self.done = anyio.Event() if on_reply is None else None
        self.reply: Any = None
        self.error: LimitsUnavailableError | None = None
        self.abandoned = False
        self.on_reply = on_reply
        self.on_error = on_error
        self.on_abandoned = on_abandoned

    def finish(self) -> None:
        if self.done is not None:
            self.done.set()
        if self.abandoned:  # its caller stopped waiting: what it did is undone, if need be
            if self.error is None and self.on_abandoned is not None:
                self.on_abandoned(self.reply)
            return
        if self.on_reply is None:  # awaited: the caller sees the outcome
            return
        if self.error is not None:
            if self.on_error is not None:
                self.on_error(self.error)
        else:
            self.on_reply(self.reply)


class Coalescer:
    """Queues operations and sends them in batches: from the task that asks when nothing is
    in flight, else from one task (:meth:`run`)."""

    def __init__(self, linger: float = LINGER) -> None:
        self._linger = linger
        self._pending: list[_Op] = []
        self._wake = anyio.Event()
        self._flush = False  # drain() asked: no lingering
        self._lingering = False
        self._sending = False
        self._send: Send | None = None
        self._failure: Failure | None = None
        self._idle = anyio.Event()
        self._idle.set()

    def post(
        self,
        args: list[Any],
        consequence: str,
        on_reply: Callable[[Any], None],
        on_error: Callable[[LimitsUnavailableError], None],
    ) -> None:
        """Queue one operation without waiting for it: ``on_reply`` gets its reply, or
        ``on_error`` the failure. Sent with the next batch (a few milliseconds later at most);
        :meth:`drain` sends it at once and waits for it."""
        self._queue(_Op(args, consequence, on_reply, on_error))

    def _queue(self, op: _Op) -> None:
        self._pending.append(op)
        if self._idle.is_set():
            self._idle = anyio.Event()
        if op.done is not None or not self._lingering:  # a settlement ends no lingering
            self._wake.set()

    def _take(self, count: int) -> list[_Op]:
        batch = [op for op in self._pending[:count] if not op.abandoned]
        del self._pending[:count]
        return batch

    async def drain(self) -> None:
        """Return once everything queued so far has been sent and answered."""
        self._flush = True
        self._wake.set()
        while not self._idle.is_set():
            await self._idle.wait()

    async def submit(
        self,
        args: list[Any],
        consequence: str,
        on_abandoned: Callable[[Any], None] | None = None,
    ) -> Any:
        """Queue one operation (its letter and arguments) and wait for its reply.

        A caller that stops waiting (cancelled) abandons it: not sent if it has not been yet;
        if it has, ``on_abandoned`` gets its reply (to undo a reservation nobody will use).
        """
        op = _Op(args, consequence, on_abandoned=on_abandoned)
        send, failure = self._send, self._failure
        if not self._sending and send is not None and failure is not None:
            # Nothing in flight: send at once from this task (no hop through the sender
            # task), with the settlements lingering; what others queue meanwhile goes with
            # the next batch. Shielded: a reply cut off by a cancellation would leave what
            # the script did unknown.
            batch = [*self._take(MAX_OPS - 1), op]
            self._sending = True
            try:
                with anyio.CancelScope(shield=True):
                    await self._send_batch(batch, send, failure)
            finally:
                self._sending = False
                if self._pending:
                    self._wake.set()
                else:
                    self._idle.set()
            if op.error is not None:
                raise op.error
            return op.reply
        self._queue(op)
        assert op.done is not None
        try:
            await op.done.wait()
        except BaseException:
            op.abandoned = True
            raise
        if op.error is not None:
            raise op.error
        return op.reply

    async def run(self, send: Send, failure: Failure) -> None:
        """Send what is queued, batch after batch, until cancelled; then fail what is left."""
        self._send, self._failure = send, failure
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if not self._flush and all(op.done is None for op in self._pending):
                    # Settlements alone: the next admission may take them along.
                    self._lingering = True
                    with anyio.move_on_after(self._linger):
                        await self._wake.wait()
                    self._lingering = False
                    self._wake = anyio.Event()
                self._flush = False
                while self._pending and not self._sending:
                    batch = self._take(MAX_OPS)
                    if batch:
                        self._sending = True
                        try:
                            await self._send_batch(batch, send, failure)
                        finally:
                            self._sending = False
                if not self._pending and not self._sending:
                    self._idle.set()
        finally:
            self._idle.set()
            self._send = self._failure = None
            closed = RuntimeError("the limits were closed")
            for op in self._pending:
                op.error = failure(closed, op.consequence)
                op.finish()
            self._pending.clear()

    @staticmethod
    async def _send_batch(batch: list[_Op], send: Send, failure: Failure) -> None:
        try:
            replies = await send([arg for op in batch for arg in op.args], len(batch))
        except anyio.get_cancelled_exc_class():
            for op in batch:
                op.error = failure(RuntimeError("the limits were closed"), op.consequence)
            raise
        except Exception as exc:
            for op in batch:
                op.error = failure(exc, op.consequence)
        else:
            for op, reply in zip(batch, replies, strict=True):
                op.reply = reply
        finally:
            for op in batch:
                op.finish()
