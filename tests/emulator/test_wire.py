"""The wire-fault proxy in front of the served emulator (``serve(..., wire=WireFaults(...))``).

A plain blocking socket and h11 play the client, so what the proxy puts on the wire is seen
byte for byte: the response, then whatever followed it in the same segment (stray bytes, the
FIN) before anything else is asked.
"""

from __future__ import annotations

import json
import socket

import attrs
import h11
import pytest

from nanobanana_async.emulator import (
    GENERATE_PATH,
    Emulator,
    Faults,
    RunningEmulator,
    WireFaults,
    serve,
)

KEY = "nb-wire-0123456789abcdef"


@attrs.frozen
class Exchange:
    """One request as a client saw it."""

    status: int
    headers: dict[bytes, bytes]
    after: bytes  # bytes that arrived after the response, before the next request
    closed: bool  # the server closed the connection after the response


class RawClient:
    """HTTP/1.1 over one socket at a time, reconnecting when the server closed the last."""

    def __init__(self, running: RunningEmulator) -> None:
        self._address = (running.host, running.port)
        self._sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def generate(self, prompt: str) -> Exchange:
        if self._sock is None:
            self._sock = socket.create_connection(self._address)
        sock, conn = self._sock, h11.Connection(h11.CLIENT)
        body = json.dumps({"prompt": prompt}).encode()
        headers = [
            ("Host", "{}:{}".format(*self._address)),
            ("Authorization", f"Bearer {KEY}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        request = h11.Request(method="POST", target=GENERATE_PATH, headers=headers)
        sock.sendall(b"".join(conn.send(e) or b"" for e in (request, h11.Data(data=body))))
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        response: h11.Response | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(1 << 16))
            elif type(event) is h11.Response:
                response = event
            elif type(event) is h11.EndOfMessage:
                break
        assert response is not None
        after, closed = self._drain(conn.trailing_data[0])
        if closed:
            self.close()
        return Exchange(response.status_code, dict(response.headers.raw_items()), after, closed)

    def _drain(self, after: bytes) -> tuple[bytes, bool]:
        # What the proxy sent with the response is already here: it goes out in one segment.
        assert self._sock is not None
        self._sock.setblocking(False)
        try:
            while data := self._sock.recv(1 << 16):
                after += data
        except BlockingIOError:
            return after, False
        finally:
            self._sock.setblocking(True)
        return after, True


def exchanges(faults: WireFaults, count: int, emulator: Emulator | None = None) -> list[Exchange]:
    emulator = emulator or Emulator(keys={KEY: 10_000}, seed=1)
    with serve(emulator, wire=faults) as running:
        client = RawClient(running)
        try:
            return [client.generate(f"p{i}") for i in range(count)]
        finally:
            client.close()


def test_without_faults_the_proxy_is_transparent() -> None:
    emulator = Emulator(keys={KEY: 10_000}, seed=1)
    with serve(emulator, wire=WireFaults()) as running:
        client = RawClient(running)
        seen = [client.generate(f"p{i}") for i in range(5)]
        client.close()
    assert [(e.status, e.after, e.closed) for e in seen] == [(200, b"", False)] * 5
    assert running.wire is not None
    assert attrs.asdict(running.wire) == {
        "connections": 1,
        "responses": 5,
        "stray_bytes_sent": 0,
        "closed_after_response": 0,
    }
    assert emulator.stats.generations == 5
    assert running.base_url == f"http://127.0.0.1:{running.port}"


def test_stray_bytes_follow_the_response_on_a_connection_left_open() -> None:
    seen = exchanges(WireFaults(stray_bytes_rate=1.0, stray_bytes=b"\r\n\r\n"), 3)
    assert [(e.status, e.after, e.closed) for e in seen] == [(200, b"\r\n\r\n", False)] * 3
    assert all(b"connection" not in e.headers for e in seen)


def test_a_close_after_the_response_comes_without_connection_close() -> None:
    seen = exchanges(WireFaults(close_after_response_rate=1.0), 3)
    assert [(e.status, e.after, e.closed) for e in seen] == [(200, b"", True)] * 3
    assert all(b"connection" not in e.headers for e in seen)


def test_faults_follow_the_seed() -> None:
    faults = WireFaults(stray_bytes_rate=0.5, close_after_response_rate=0.5, seed=7)
    first = [(e.after, e.closed) for e in exchanges(faults, 30)]
    again = [(e.after, e.closed) for e in exchanges(faults, 30)]
    assert first == again
    assert {(b"", False), (b"\r\n", False), (b"", True), (b"\r\n", True)} <= set(first)


def test_the_counters_say_what_was_done() -> None:
    faults = WireFaults(stray_bytes_rate=0.5, close_after_response_rate=0.5, seed=3)
    emulator = Emulator(keys={KEY: 10_000}, seed=1)
    with serve(emulator, wire=faults) as running:
        client = RawClient(running)
        seen = [client.generate(f"p{i}") for i in range(30)]
        client.close()
    assert running.wire is not None
    closes = sum(e.closed for e in seen)
    assert running.wire.responses == 30
    assert running.wire.stray_bytes_sent == sum(e.after == b"\r\n" for e in seen)
    assert running.wire.closed_after_response == closes
    assert running.wire.connections == 1 + closes - seen[-1].closed


def test_a_dropped_connection_stays_dropped() -> None:
    # The emulator's own faults pass through: a drop is a close with no response.
    emulator = Emulator(keys={KEY: 10_000}, faults=Faults(drop_rate=1.0), seed=1)
    with serve(emulator, wire=WireFaults(stray_bytes_rate=1.0)) as running:
        client = RawClient(running)
        with pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):
            client.generate("p")
        client.close()
    assert running.wire is not None
    assert running.wire.responses == 0
    assert emulator.stats.generate_requests == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stray_bytes_rate": 1.5},
        {"close_after_response_rate": -0.1},
        {"stray_bytes_rate": True},
        {"stray_bytes": b""},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        WireFaults(**kwargs)  # type: ignore[arg-type]
