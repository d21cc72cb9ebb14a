"""Serving the emulator on a real loopback socket: uvicorn in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import attrs
from anyio.from_thread import start_blocking_portal

from .app import Emulator
from .asgi import DropConnection, Message, Receive, Scope, Send, json_bytes
from .wire import WireFaults, WireProxy, WireStats

__all__ = ["RunningEmulator", "serve"]


@attrs.frozen
class RunningEmulator:
    """An emulator being served by :func:`serve`: point clients at ``base_url``.

    ``wire`` counts what the wire-fault proxy did when :func:`serve` was given ``wire=``
    (``port`` and ``base_url`` are then the proxy's).
    """

    emulator: Emulator
    host: str
    port: int
    base_url: str
    wire: WireStats | None = None


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


_quiet_drops = _QuietDrops()


class _Served:
    """Wraps the app under uvicorn so that stopping the server need not wait for slow work.

    Uvicorn waits for every request in progress before it exits, which with a latency of
    30 s means 30 s. On stop, requests still in progress are answered 503 at once instead.
    """

    def __init__(self, app: Emulator) -> None:
        self._app = app
        self._scopes: set[anyio.CancelScope] = set()
        self._stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Uvicorn runs on asyncio: this is the loop to reach from the calling thread.
            self.loop = asyncio.get_running_loop()
            await self._app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.CancelScope() as cancel:
            if self._stopping:
                cancel.cancel()
            self._scopes.add(cancel)
            try:
                await self._app(scope, receive, tracked_send)
            finally:
                self._scopes.discard(cancel)
        if cancel.cancelled_caught and not started:
            body = json_bytes({"code": 503, "message": "emulator shutting down"})
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    def stop(self) -> None:
        """Cancel the requests in progress; call in the server's event loop."""
        self._stopping = True
        for cancel in list(self._scopes):
            cancel.cancel()


def _import_uvicorn() -> Any:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "serving the emulator on a socket needs uvicorn: "
            "pip install 'nanobanana-async[emulator]' "
            "(Emulator.transport() works in-process without it)",
            name="uvicorn",
        ) from None
    return uvicorn


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    # A wildcard address is where to listen, not where to connect.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _wire_proxy(
    faults: WireFaults | None, host: str, port: int, upstream: int
) -> Iterator[tuple[int, WireStats | None]]:
    """The proxy in front of the app (its own thread and event loop), or the app's port."""
    if faults is None:
        yield upstream, None
        return
    proxy = WireProxy(faults, (_url_host(host).strip("[]"), upstream))
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(proxy.listening(host, port)) as proxy_port,
    ):
        yield proxy_port, proxy.stats


@contextlib.contextmanager
def serve(
    emulator: Emulator | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    wire: WireFaults | None = None,
) -> Iterator[RunningEmulator]:
    """Serve ``emulator`` over HTTP on ``host:port`` in a background thread (needs uvicorn).

    ``port=0`` picks a free port. Yields once the server accepts connections; on exit,
    requests still in progress are answered 503, the server stops and its thread is joined.
    Raises ``OSError`` if the address cannot be bound. Logs nothing below warnings, and
    nothing at all for the connections it drops on purpose::

        with serve(Emulator(faults=Faults(latency=0.1))) as server:
            client = AsyncNanoBanana("any-key", base_url=server.base_url)

    ``wire=WireFaults(...)`` puts a :class:`~nanobanana_async.emulator.wire.WireProxy` on
    ``host:port`` in front of the app (which then listens on a free port of ``host``) for
    faults below HTTP: stray bytes after a response, a close after a response that kept the
    connection alive. ``RunningEmulator.wire`` counts them.
    """
    uvicorn = _import_uvicorn()
    app = Emulator() if emulator is None else emulator
    served = _Served(app)
    logging.getLogger("uvicorn.error").addFilter(_quiet_drops)  # idempotent
    sock = _bind(host, 0 if wire is not None else port)
    try:
        config = uvicorn.Config(
            served,
            # Leave the host application's logging alone; uvicorn's own chatter is noise here.
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            ws="none",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="nanobanana-emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                raise RuntimeError("the emulator server did not start")
            time.sleep(0.005)
        bound_port = int(sock.getsockname()[1])
        try:
            with _wire_proxy(wire, host, port, bound_port) as (
                public_port,
                stats,
            ):
                url = f"http://{_url_host(host)}:{public_port}"
                yield RunningEmulator(app, host, public_port, url, stats)
        finally:
            server.should_exit = True
            if served.loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop already closed
                    served.loop.call_soon_threadsafe(served.stop)
            thread.join(15)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)
    finally:
        sock.close()
