"""Blocking database connections used from worker threads, on asyncio and Trio alike.

psycopg's async connection is asyncio-only and sqlite3 has none, so each store runs its
blocking connections in ``anyio.to_thread``: ``size`` connection slots, a limiter of ``size``
tokens, so a thread holding a token always finds a free slot. A statement that started is
never abandoned: a cancelled caller waits for it, so what the database holds is never a
surprise.

A pool given ``here`` (SQLite's) may run a call on the event loop's own thread instead
(``run(..., here=True)``): a short write to a local file costs less than the hop to a worker
thread and back, and far less than the two threads taking turns at the GIL for every
statement (with one thread busy running jobs, the other waits up to the interpreter's switch
interval, 5 ms, each time it wants the GIL back). ``here(conn, True)`` sets the connection up
never to wait for another process's lock: a call that would wait (a lock held elsewhere) or
fails is run again in a worker thread, where waiting blocks nothing else.

Faults (a restart, a dropped connection, a server that stops answering):

- A failure that means "the database is not there right now" (the backend's ``transient``)
  closes that connection and the call is tried again on a new one, backing off, for as long
  as the store has been failing less than ``retry_window`` seconds. The window is the
  pool's, not each call's: twenty calls failing together give up together. A pool that
  never made a connection fails at once: a wrong URL is said in a second, not after the
  window (a connection made, then busy or failing, is waited for).
- Past the window the pool is down: that call and every later one raise
  :class:`StoreUnavailableError` at once, and the run using it stops.
- ``deadline``: a call running longer than that many seconds (a server that stopped
  answering holds a socket open forever) has its connection interrupted by a watchdog
  thread (``interrupt``: the socket shut down, or SQLite's interrupt), which makes it fail
  like a dropped connection. A thread rather than a task: the call blocks a thread, and the
  watchdog must reach it without the event loop; it lives from :meth:`open` to :meth:`close`.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .base import StoreError, StoreUnavailableError

__all__ = ["Pool"]

T = TypeVar("T")


class _Transient(Exception):
    """A call failed because the database is not reachable right now (internal);
    ``connecting``: no connection could be made at all."""

    def __init__(self, detail: str, *, connecting: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.connecting = connecting


def detail_of(exc: BaseException) -> str:
    """The first line of a driver's message (libpq's run to several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Pool:
    """``size`` connections made by ``connect`` and readied by ``setup``; ``broken(conn)``
    says one must be replaced, ``transient(exc)`` that an error means the database is
    unreachable rather than that the statement was refused."""

    def __init__(
        self,
        connect: Callable[[], Any],
        size: int,
        *,
        setup: Callable[[Any], None] = lambda conn: None,
        errors: tuple[type[BaseException], ...],
        broken: Callable[[Any], bool],
        where: str,
        transient: Callable[[BaseException], bool] = lambda exc: False,
        interrupt: Callable[[Any], None] | None = None,
        retry_window: float = 0.0,
        deadline: float | None = None,
        hint: Callable[[], str] = str,
        here: Callable[[Any, bool], None] | None = None,
        busy: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._connect = connect
        self._setup = setup
        self._size = size
        self._errors = errors
        self._broken = broken
        self._transient = transient
        self._interrupt = interrupt
        self._window = retry_window
        self._deadline = deadline if interrupt is not None else None
        self._hint = hint
        self._here = here
        self._busy = busy
        self._where = where
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._limiter = anyio.CapacityLimiter(size)
        self._opened = False
        self._failing_since: float | None = None
        self._failures = 0
        self.retries = 0  # calls tried again after a transient failure, ever
        self._connected = False
        self.down: StoreUnavailableError | None = None
        # Calls in progress: a key of each call's own -> (connection, monotonic deadline).
        self._running: dict[object, tuple[Any, float]] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def error(self, exc: BaseException) -> StoreError:
        return StoreError(f"job store {self._where}: {detail_of(exc)}")

    async def open(self) -> None:
        """Make the first connection (the others are made when first needed)."""
        if not self._opened:
            for _ in range(self._size):
                self._free.put(None)
            self._opened = True
            if self._deadline is not None:
                self._stop.clear()
                self._watchdog = threading.Thread(
                    target=self._watch, name="nanobanana store watchdog", daemon=True
                )
                self._watchdog.start()
        await self.run(_nothing)

    def _open_one(self) -> Any:
        try:
            conn = self._connect()
        except self._errors as exc:
            if self._transient(exc):
                raise _Transient(detail_of(exc), connecting=True) from None
            raise self.error(exc) from None
        try:
            self._setup(conn)
            if self._here is not None:  # set up for calls on the event loop's thread
                self._here(conn, True)
        except BaseException:
            _close(conn)
            raise
        return conn

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], here: bool = False) -> T:
        conn = self._free.get_nowait()  # never empty: the limiter has one token per slot
        timed_out = False
        try:
            if conn is not None and self._broken(conn):
                _close(conn)
                conn = None
            if conn is None:
                if here:  # connecting may wait (for a lock, the schema): in a worker thread
                    raise _Busy
                conn = self._open_one()
            if self._here is not None and not here:
                fn, args = self._waiting, (fn, args)
            if self._deadline is None:
                return fn(conn, *args)
            # A key of this call's own: the watchdog may only ever take this call's entry.
            key = object()
            self._running[key] = (conn, time.monotonic() + self._deadline)
            try:
                return fn(conn, *args)
            finally:  # the watchdog took the entry of a call it interrupted
                timed_out = self._running.pop(key, None) is None
        except self._errors as exc:
            if here and not timed_out and self._busy(exc):
                raise _Busy from None  # the same connection, in a worker thread
            transient = timed_out or self._transient(exc)
            if conn is not None and (transient or self._broken(conn)):
                _close(conn)
                conn = None
            if timed_out:
                raise _Transient(f"no answer within {self._deadline:g} s") from None
            if transient:
                raise _Transient(detail_of(exc)) from None
            raise self.error(exc) from None
        finally:
            self._free.put(conn)

    def _waiting(self, conn: Any, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn`` in a worker thread on a connection set up for the event loop's thread:
        there it may wait for locks."""
        assert self._here is not None
        self._here(conn, False)
        try:
            return fn(conn, *args)
        finally:
            self._here(conn, True)

    def _call_here(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T | _NotHere:
        """``fn`` on the event loop's thread, if a connection is free right now."""
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            return _NOT_HERE  # a worker thread has it: wait for it there
        try:
            return self._call(fn, args, here=True)
        except _Busy:
            return _NOT_HERE
        finally:
            self._limiter.release()

    async def run(self, fn: Callable[..., T], *args: Any, here: bool = False) -> T:
        """``fn(connection, *args)`` in a worker thread (``here``: on this thread, when the
        pool can), tried again on a new connection while the store has been unreachable for
        less than the retry window."""
        here = here and self._here is not None and self._opened
        while True:
            if self.down is not None:
                raise self.down
            try:
                result: T | _NotHere = _NOT_HERE
                if here:
                    here = False  # once: after a failure, the call goes to a worker thread
                    result = self._call_here(fn, args)
                if isinstance(result, _NotHere):
                    result = await anyio.to_thread.run_sync(
                        self._call, fn, args, limiter=self._limiter
                    )
            except _Transient as exc:
                await self._failed(exc.detail, connecting=exc.connecting)
                continue
            self._connected = True
            self._failing_since = None
            self._failures = 0
            return result

    async def _failed(self, detail: str, *, connecting: bool) -> None:
        now = time.monotonic()
        if connecting and not self._connected:
            raise StoreUnavailableError(f"job store {self._where} is unreachable ({detail})")
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since >= self._window:
            if self.down is None:
                self.down = StoreUnavailableError(
                    f"job store {self._where} is unreachable ({detail}; retried for "
                    f"{self._window:g} s)" + self._hint()
                )
            raise self.down
        self._failures += 1
        self.retries += 1
        # Backing off from 50 ms to 2 s, with jitter; never past the end of the window.
        delay = min(2.0, 0.05 * 2 ** min(self._failures, 6)) * (0.5 + random.random() / 2)
        left = self._window - (now - self._failing_since)
        await anyio.sleep(max(0.0, min(delay, left)))

    def _watch(self) -> None:
        assert self._deadline is not None
        tick = max(0.05, min(1.0, self._deadline / 4))
        while not self._stop.wait(tick):
            now = time.monotonic()
            # dict operations are atomic: a call that ends meanwhile takes its entry first.
            late = [key for key, (_conn, until) in list(self._running.items()) if now > until]
            for key in late:
                entry = self._running.pop(key, None)
                if entry is not None:
                    assert self._interrupt is not None
                    with contextlib.suppress(Exception):
                        self._interrupt(entry[0])

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            while not self._free.empty():
                conn = self._free.get_nowait()
                if conn is not None:
                    await anyio.to_thread.run_sync(_close, conn)
            self._opened = False
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None:
                self._stop.set()
                await anyio.to_thread.run_sync(watchdog.join)


class _Busy(Exception):
    """A call on the event loop's thread would have waited for a lock (internal)."""


class _NotHere:
    """A call that did not run on the event loop's thread (internal)."""


_NOT_HERE = _NotHere()


def _nothing(conn: Any) -> None:
    return None


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # a connection already gone has nothing to close
        conn.close()
