"""How RedisLimits reaches Redis: a channel (one connection, checked when made) and, while the
limits are open, a session owning it.

A :class:`Channel` connects on first need and again after a failure, runs ``verify`` on each
new connection (persistence, the ledger's identity) and sends one command at a time under
the limits' timeout. Limits that are not open use a channel for one call, in the caller's
task. Open limits hold a :class:`Session`: the channel, the coalescer that puts the
operations of concurrent tasks into one script call, and a task group, entered by
``open()`` and left by ``aclose()`` in the same task (the client's ``async with``), that runs
the coalescer's sender and the limits' upkeep (lease renewals, settlements that met an
outage). Nothing runs outside it: no system task, no task left to the garbage collector.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from ...errors import LimitsUnavailableError
from .coalescing import Coalescer
from .resp import Arg, Connection, ProtocolError, ReplyError, Target

__all__ = ["UNAVAILABLE", "Call", "Channel", "Script", "Session", "evaluate"]

logger = logging.getLogger("nanobanana_async")

# What "Redis cannot be used right now" looks like: refused, reset, end of stream, a timeout,
# an error reply, bytes that are not RESP.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    ReplyError,
    ProtocolError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)

Call = Callable[..., Awaitable[Any]]


@attrs.frozen
class Script:
    """A Lua script, run by its SHA1 (loaded again where Redis does not know it)."""

    text: str
    sha: str

    @classmethod
    def of(cls, text: str) -> Script:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


async def evaluate(call: Call, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run ``script`` through ``call``: EVALSHA, or EVAL where Redis lost it (a restart)."""
    try:
        return await call("EVALSHA", script.sha, len(keys), *keys, *args)
    except ReplyError as exc:
        if exc.code != "NOSCRIPT":  # never ran: safe to send again
            raise
        return await call("EVAL", script.text, len(keys), *keys, *args)


class Channel:
    """One connection to Redis at a time, made when needed and checked by ``verify``."""

    def __init__(
        self, target: Target, timeout: float, verify: Callable[[Call], Awaitable[None]]
    ) -> None:
        self._target = target
        self._timeout = timeout
        self._verify = verify
        self._connection: Connection | None = None
        self._lock = anyio.Lock()

    async def call(self, *args: Arg) -> Any:
        """One command and its reply, connecting (and verifying) first if need be."""
        async with self._lock:
            if self._connection is not None and self._connection.stale():
                await self.aclose()
            if self._connection is None:
                with anyio.fail_after(self._timeout):
                    connection = await Connection.open(self._target)
                self._connection = connection
                try:
                    await self._verify(self._send)
                except BaseException:
                    await self.aclose()
                    raise
            return await self._send(*args)

    async def _send(self, *args: Arg) -> Any:
        connection = self._connection
        if connection is None:  # closed meanwhile (by aclose)
            raise anyio.ClosedResourceError
        try:
            with anyio.fail_after(self._timeout):
                return await connection.call(*args)
        except ReplyError:
            raise  # an answer: the connection is in step
        except BaseException:  # a timeout, a cancellation, a reset: out of step, never reused
            await self.aclose()
            raise

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run ``script`` on ``keys`` with ``args``."""
        return await evaluate(self.call, script, keys, args)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()


class Session:
    """What open limits hold: their channel, their coalescer and the task group running the
    coalescer's sender and ``upkeep``."""

    def __init__(
        self,
        channel: Channel,
        send: Callable[[list[Any], int], Awaitable[list[Any]]],
        failure: Callable[[BaseException, str], LimitsUnavailableError],
        upkeep: Callable[[], Awaitable[None]],
        drain_timeout: float,
    ) -> None:
        self.channel = channel
        self.coalescer = Coalescer()
        self.opener = anyio.get_current_task().id
        self._send, self._failure, self._upkeep = send, failure, upkeep
        self._drain_timeout = drain_timeout
        self._stack = contextlib.AsyncExitStack()
        self._scopes: list[anyio.CancelScope] = []
        self._ended: list[anyio.Event] = []

    async def start(self) -> None:
        """Enter the task group (in the calling task, which must be the one that calls
        :meth:`leave`) and start the sender and the upkeep in it."""
        group = await self._stack.enter_async_context(anyio.create_task_group())
        for work, args in ((self.coalescer.run, (self._send, self._failure)), (self._upkeep, ())):
            # Made here, not in the task: a stop() before the task first runs still ends it.
            scope, ended = anyio.CancelScope(), anyio.Event()
            self._scopes.append(scope)
            self._ended.append(ended)
            group.start_soon(self._guarded, scope, ended, work, *args)

    @staticmethod
    async def _guarded(
        scope: anyio.CancelScope,
        ended: anyio.Event,
        work: Callable[..., Awaitable[None]],
        *args: Any,
    ) -> None:
        # A failure here must never reach the task group: its cancel scope covers the code of
        # the task that opened the limits (the body of the client's async with).
        try:
            with scope:
                await work(*args)
        except Exception:
            logger.exception(
                "shared limits: %s ended with an error", getattr(work, "__name__", work)
            )
        finally:
            ended.set()

    async def stop(self) -> None:
        """From any task: send what was posted (a few seconds at most), end the tasks, close
        the connection. The task group stays entered until :meth:`leave`."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._drain_timeout):
                await self.coalescer.drain()
            for scope in self._scopes:
                scope.cancel()
            for ended in self._ended:
                await ended.wait()
            await self.channel.aclose()

    async def leave(self) -> None:
        """Leave the task group (in the task that started it; after :meth:`stop`)."""
        await self._stack.aclose()
