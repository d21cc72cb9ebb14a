"""One coredis client, entered and exited by a task of its own; calls with a deadline.

coredis 6 runs its connection pool as an anyio task group, which must be entered and exited
by the same task, and any task inside that group's cancel scope is hit when the pool fails.
So the pool belongs to an owner task started for it (an asyncio task, or a Trio system task,
as the batch runner's background task is): whichever task opens or closes the limits (a
client's ``async with``, a FastAPI lifespan, the first call of a client never entered), the
owner enters and exits the pool, and callers only send commands through it. This is the only
module that imports coredis.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import coredis
import coredis.exceptions
import sniffio
from coredis.commands.script import Script
from coredis.connection import TCPConnection
from coredis.retry import NoRetryPolicy

from ...errors import LimitsUnavailableError, redact
from .coalescing import Coalescer
from .config import RedisConfig

__all__ = ["RedisConnection", "Scripts"]

logger = logging.getLogger("nanobanana_async")

# What "Redis cannot be used right now" looks like: refused, reset, EOF, a timeout (coredis's
# or our deadline), an error reply, or a pool that has exited.
_UNAVAILABLE = (coredis.exceptions.RedisError, TimeoutError, OSError, RuntimeError)


class _ClosingTCPConnection(TCPConnection):
    """coredis 6.9 opens three memory-stream pairs per connection and closes them only once
    connected: every refused connect would leave six for the garbage collector, each a
    ResourceWarning. Close them whatever happened."""

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            for stream in (
                self._write_buffer_in,
                self._write_buffer_out,
                self._push_message_buffer_in,
                self._push_message_buffer_out,
                self._streamed_message_buffer_in,
                self._streamed_message_buffer_out,
            ):
                stream.close()


class Scripts:
    """The Lua scripts as coredis ``Script`` objects (EVALSHA, loaded again after NOSCRIPT)."""

    def __init__(self, batch: str, status: str, reset: str) -> None:
        self.batch: Script[str] = Script(script=batch)
        self.status: Script[str] = Script(script=status)
        self.reset: Script[str] = Script(script=reset)


def _client(config: RedisConfig) -> coredis.Redis[str]:
    client: coredis.Redis[str] = coredis.Redis.from_url(
        config.url,
        decode_responses=True,
        connect_timeout=config.timeout,
        stream_timeout=config.timeout,
        pool_timeout=config.timeout,
        # The default policy re-runs a command that timed out: a script may then run twice.
        retry_policy=NoRetryPolicy(),
    )
    pool = client.connection_pool
    if pool.connection_class is TCPConnection:
        pool.connection_class = _ClosingTCPConnection
    return client


class RedisConnection:
    """The coredis client of one RedisLimits while it is open, owned by its own task."""

    def __init__(self, config: RedisConfig, scripts: Scripts, keys: list[str]) -> None:
        self._config = config
        self._scripts = scripts
        self._keys = keys
        self._coalescer = Coalescer()
        self._client: coredis.Redis[str] | None = None
        self._failure: BaseException | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._start()

    @property
    def done(self) -> bool:
        """The owner task has ended (closed, or its event loop went away)."""
        return self._done.is_set()

    def _start(self) -> None:
        if sniffio.current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(
                self._own, name="nanobanana redis limits", context=contextvars.copy_context()
            )
        else:
            import asyncio

            self._task = asyncio.get_running_loop().create_task(
                self._own(), name="nanobanana redis limits"
            )

    async def _own(self) -> None:
        try:
            client = _client(self._config)
            async with client, anyio.create_task_group() as tg:
                self._client = client
                tg.start_soon(self._coalescer.run, self._send_batch, self._failure_of)
                self._ready.set()
                await self._stop.wait()
                # Settlements posted without waiting go out before the pool closes.
                with anyio.move_on_after(2 * self._config.timeout):
                    await self._coalescer.drain()
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # never escapes a system task: callers are told instead
            self._failure = exc
            logger.warning("Redis limits at %s: connection pool ended: %r", self.url, exc)
        finally:
            self._client = None
            self._ready.set()
            self._done.set()

    @property
    def url(self) -> str:
        return self._config.safe_url

    async def close(self) -> None:
        """Stop the owner task (which exits the pool) and wait for it, a few seconds at most."""
        self._stop.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._done.wait()

    def unavailable(self, why: str, consequence: str) -> LimitsUnavailableError:
        message = redact(
            f"shared limits unavailable at {self.url} (namespace {self._config.namespace!r}): "
            f"{why}; {consequence}",
            self._config.password,
        )
        return LimitsUnavailableError(message, url=self.url)

    def _failure_of(self, exc: BaseException, consequence: str) -> LimitsUnavailableError:
        what = "no answer within the timeout" if isinstance(exc, TimeoutError) else repr(exc)
        return self.unavailable(what, consequence)

    async def _send_batch(self, args: list[Any], count: int) -> list[Any]:
        client = self._client
        if client is None:
            raise RuntimeError(f"the connection pool ended ({self._failure!r})")
        with anyio.fail_after(self._config.timeout):
            replies: list[Any] = await self._scripts.batch(
                self._keys, [count, *args], client=client
            )
        return replies

    async def submit(self, args: list[Any], consequence: str) -> Any:
        """One admission (``"a", ...``) or settlement (``"s", ...``), sent with whatever else
        this process asks for meanwhile: its reply, or :class:`LimitsUnavailableError`."""
        if self.done:
            raise self.unavailable(f"the connection pool ended ({self._failure!r})", consequence)
        try:
            # Queued behind at most one batch in flight: two calls' time at most.
            with anyio.fail_after(2 * self._config.timeout):
                return await self._coalescer.submit(args, consequence)
        except TimeoutError:
            raise self.unavailable("no answer within the timeout", consequence) from None

    def post(self, args: list[Any], consequence: str, on_reply: Callable[[Any], None]) -> None:
        """Queue one operation without waiting for its answer (a settlement): sent with the
        next batch, and before the pool closes; a failure is logged."""
        self._coalescer.post(args, consequence, on_reply)

    async def flush(self) -> None:
        """Wait until what was posted so far has been answered (two timeouts at most)."""
        with anyio.move_on_after(2 * self._config.timeout):
            await self._coalescer.drain()

    async def call(
        self, script: Script[str], keys: list[str], args: list[Any], consequence: str
    ) -> Any:
        """Run ``script``: its reply, or :class:`LimitsUnavailableError` (saying
        ``consequence``) within ``timeout``."""
        try:
            with anyio.fail_after(self._config.timeout):
                await self._ready.wait()
                client = self._client
                if client is None:
                    raise self.unavailable(
                        f"the connection pool ended ({self._failure!r})", consequence
                    )
                return await script(keys, args, client=client)
        except _UNAVAILABLE as exc:
            what = "no answer within the timeout" if isinstance(exc, TimeoutError) else repr(exc)
            raise self.unavailable(what, consequence) from None
