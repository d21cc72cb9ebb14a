"""Blocking database connections used from worker threads, on asyncio and Trio alike.

psycopg's async connection is asyncio-only and sqlite3 has none, so each store runs its
blocking connections in ``anyio.to_thread``: ``size`` connections, a limiter of ``size``
tokens, so a thread holding a token always finds a free connection. A statement that started
is never abandoned: a cancelled caller waits for it (milliseconds), so what the database
holds is never a surprise.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .base import StoreError

__all__ = ["Pool"]

T = TypeVar("T")


class Pool:
    """``size`` connections made by ``connect``; ``broken(conn)`` says one must be replaced."""

    def __init__(
        self,
        connect: Callable[[], Any],
        size: int,
        *,
        errors: tuple[type[BaseException], ...],
        broken: Callable[[Any], bool],
        where: str,
    ) -> None:
        self._connect = connect
        self._size = size
        self._errors = errors
        self._broken = broken
        self._where = where
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._limiter = anyio.CapacityLimiter(size)
        self._opened = 0

    def error(self, exc: BaseException) -> StoreError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreError(f"job store {self._where}: {detail}")

    def _open_one(self) -> Any:
        try:
            return self._connect()
        except self._errors as exc:
            raise self.error(exc) from None

    async def open(self) -> None:
        while self._opened < self._size:
            self._free.put(await anyio.to_thread.run_sync(self._open_one))
            self._opened += 1

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._free.get_nowait()  # never empty: the limiter has one token per connection
        try:
            if self._broken(conn):
                _close(conn)
                conn = self._open_one()
            return fn(conn, *args)
        except self._errors as exc:
            raise self.error(exc) from None
        finally:
            self._free.put(conn)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in a worker thread."""
        return await anyio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            while not self._free.empty():
                await anyio.to_thread.run_sync(_close, self._free.get_nowait())
            self._opened = 0


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # a connection already gone has nothing to close
        conn.close()
