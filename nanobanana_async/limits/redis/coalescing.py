"""One round trip for many: the admissions and settlements that the tasks of one process ask
for while a call to Redis is in flight go together in the next one.

A batch at concurrency 128 asks for hundreds of admissions and settlements a second; through
the Redis client one by one each cost a few hundred microseconds of this process's CPU, which
a busy event loop does not have. The coalescer sends whatever is waiting as one script call
(``scripts.BATCH``) as soon as the previous one answered: a lone call goes out at once, a
crowd shares a round trip. Operations keep their order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ...errors import LimitsUnavailableError

__all__ = ["Coalescer"]

# Operations per script call at most (ARGV stays small; Lua's unpack has limits).
MAX_OPS = 256

Send = Callable[[list[Any], int], Awaitable[list[Any]]]
Failure = Callable[[BaseException, str], LimitsUnavailableError]


class _Op:
    __slots__ = (
        "abandoned",
        "args",
        "consequence",
        "done",
        "error",
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
    ) -> None:
        self.args = args
        self.consequence = consequence
        self.done = anyio.Event()
        self.reply: Any = None
        self.error: LimitsUnavailableError | None = None
        self.abandoned = False
        self.on_reply = on_reply
        self.on_error = on_error

    def finish(self) -> None:
        self.done.set()
        if self.on_reply is None:  # awaited: the caller sees the outcome
            return
        if self.error is not None:
            if self.on_error is not None:
                self.on_error(self.error)
        else:
            self.on_reply(self.reply)


class Coalescer:
    """Queues operations and sends them in batches from one task (:meth:`run`)."""

    def __init__(self) -> None:
        self._pending: list[_Op] = []
        self._wake = anyio.Event()
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
        ``on_error`` the failure. Sent with the next batch; :meth:`drain` waits for it."""
        self._queue(_Op(args, consequence, on_reply, on_error))

    def _queue(self, op: _Op) -> None:
        self._pending.append(op)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._wake.set()

    async def drain(self) -> None:
        """Return once everything queued so far has been sent and answered."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def submit(self, args: list[Any], consequence: str) -> Any:
        """Queue one operation (``"a"`` or ``"s"`` and its arguments) and wait for its reply.

        A caller that stops waiting (cancelled, timed out) abandons it: not sent if it has
        not been yet.
        """
        op = _Op(args, consequence)
        send, failure = self._send, self._failure
        if not self._sending and not self._pending and send is not None and failure is not None:
            # Nothing in flight: send at once from this task (no hop through the sender
            # task); what others queue meanwhile goes with the next batch.
            self._sending = True
            try:
                await self._send_batch([op], send, failure)
            finally:
                self._sending = False
                if self._pending:
                    self._wake.set()
            if op.error is not None:
                raise op.error
            return op.reply
        self._queue(op)
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
                while self._pending and not self._sending:
                    batch = [op for op in self._pending[:MAX_OPS] if not op.abandoned]
                    del self._pending[:MAX_OPS]
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
