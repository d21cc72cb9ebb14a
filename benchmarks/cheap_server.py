"""A server that costs almost nothing: ``python -m benchmarks.cheap_server [--latency S]``.

The emulator under uvicorn spends more CPU per request than the clients measured against it,
so on a small machine it compresses every client towards its own limit. This one is an asyncio
``Protocol`` (the stdlib loop, no uvloop) that parses just enough HTTP/1.1 (the request line,
``Content-Length``, ``Connection: close``), keeps connections alive and answers every request
with one fixed generate success after ``--latency`` seconds (``loop.call_later``), in order on
each connection. It prints its base URL on the first line of stdout and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket

SUCCESS = b'{"code":0,"message":"ok","data":{"url":"http://127.0.0.1/images/benchmark.png"}}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    % len(SUCCESS)
) + SUCCESS
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_MAX_HEAD = 64 << 10


class _Answering(asyncio.Protocol):
    latency = 0.0

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._body_left = -1  # body bytes of the current request still to come; -1: in the head
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            if self._body_left < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        self._refuse()
                        return
                    break
                if not self._read_head(buffer[:end]):
                    self._refuse()
                    return
                buffer = buffer[end + 4 :]
            if len(buffer) < self._body_left:
                break
            buffer = buffer[self._body_left :]
            self._body_left = -1
            self._answer(self._close_after)
        self._buffer = buffer

    def _read_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        if len(lines[0].split(b" ")) != 3:
            return False
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                return False  # chunked request bodies: not needed here
        self._body_left, self._close_after = length, close
        return True

    def _answer(self, close: bool) -> None:
        if self.latency > 0:
            asyncio.get_running_loop().call_later(self.latency, self._write, close)
        else:
            self._write(close)

    def _write(self, close: bool) -> None:
        transport = self._transport
        if transport is not None:
            transport.write(ANSWER)
            if close:
                transport.close()

    def _refuse(self) -> None:
        if self._transport is not None:
            self._transport.write(_BAD_REQUEST)
            self._transport.close()


async def serve(latency: float, port: int = 0, host: str = "127.0.0.1") -> None:
    _Answering.latency = latency
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answering, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://{host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cheap_server", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.latency, args.port))


if __name__ == "__main__":
    main()
