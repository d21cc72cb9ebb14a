"""The emulator over a real loopback socket (uvicorn) and as ``python -m`` in a process."""

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from nanobanana_async import emulator as emulator_module
from nanobanana_async.emulator import (
    Emulator,
    Faults,
    RunningEmulator,
    serve,
)
from tests.emulator.inprocess import (
    GENERATE,
    KEY,
    parse_png,
)

anyio_test = pytest.mark.anyio


# -- over a real socket ------------------------------------------------------------------------


def test_serve_over_a_socket(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("uvicorn")
    caplog.set_level(logging.INFO)
    emulator = Emulator(keys={KEY: 100}, seed=1)
    auth = {"Authorization": f"Bearer {KEY}"}
    with serve(emulator) as server, httpx.Client(base_url=server.base_url) as client:
        assert isinstance(server, RunningEmulator)
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        response = client.post(GENERATE, json={"prompt": "x", "num": 2}, headers=auth)
        assert response.status_code == 200
        urls = response.json()["data"]["url"]
        assert all(url.startswith(server.base_url) for url in urls)
        assert parse_png(client.get(urls[0]).content)[:2] == (256, 256)
        assert client.get("/_emulator/stats").json()["generations"] == 1

        emulator.faults = Faults(drop_rate=1.0, drop_after_charge_share=0.5)
        for _ in range(4):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post(GENERATE, json={"prompt": "x"}, headers=auth)
        emulator.faults = Faults()
        # The connection pool recovers: the next request works.
        assert client.post(GENERATE, json={"prompt": "y"}, headers=auth).status_code == 200
    drops = emulator.stats.faults
    assert drops["dropped_before_charge"] + drops["dropped_after_charge"] == 4
    assert emulator.balance(KEY) == 100 - 2 * (3 + drops["dropped_after_charge"])
    # Deliberate drops are not logged as application errors.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_cut_truncated_and_gzip_bodies_over_a_socket() -> None:
    pytest.importorskip("uvicorn")
    emulator = Emulator(keys={KEY: 100}, seed=3)
    headers = {"Authorization": f"Bearer {KEY}", "Accept-Encoding": "identity"}
    body = {"prompt": "a kite"}
    with (
        serve(emulator) as server,
        httpx.Client(base_url=server.base_url, headers=headers) as client,
    ):
        whole = client.post(GENERATE, json=body).content
        assert whole.startswith(b'{"code":0')

        # Cut: Content-Length promises the whole body, the connection closes part way.
        emulator.faults = Faults(cut_success_rate=1.0)
        with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection") as info:
            client.post(GENERATE, json=body)
        assert f"expected {len(whole)})" in str(info.value)
        with client.stream("POST", GENERATE, json=body) as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == len(whole)
            with pytest.raises(httpx.RemoteProtocolError, match=r"received \d+ bytes"):
                response.read()

        # Cut after compression.
        emulator.faults = Faults(cut_success_rate=1.0, gzip_rate=1.0)
        with client.stream("POST", GENERATE, json=body) as response:
            assert response.headers["content-encoding"] == "gzip"
            fourth = whole.replace(b"_0_1.png", b"_0_4.png")  # the fourth generation's body
            assert int(response.headers["content-length"]) == len(gzip.compress(fourth, mtime=0))
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()

        # Truncated: a complete exchange whose JSON is cut.
        emulator.faults = Faults(truncated_success_rate=1.0)
        truncated = client.post(GENERATE, json=body)
        # Its record is there as soon as the answer is.
        assert emulator.stats.generate_records[-1].faults == ("truncated_success",)
        assert truncated.status_code == 200
        assert int(truncated.headers["content-length"]) == len(truncated.content)
        assert 0 < len(truncated.content) < len(whole)
        # The fifth generation: the same body as the first but for the serial in its URL.
        assert whole.replace(b"_0_1.png", b"_0_5.png").startswith(truncated.content)

        # Gzip, though the client asked for identity.
        emulator.faults = Faults(gzip_rate=1.0)
        with client.stream("POST", GENERATE, json=body) as response:
            raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
        assert int(response.headers["content-length"]) == len(raw)
        assert json.loads(gzip.decompress(raw))["code"] == 0
        emulator.faults = Faults(gzip_rate=1.0, rate_limit_rate=1.0)
        limited = client.post(GENERATE, json=body)
        assert limited.headers["content-encoding"] == "gzip"
        assert limited.json()["code"] == 429

        emulator.faults = Faults()
        assert client.post(GENERATE, json=body).status_code == 200  # the pool recovers
    stats = emulator.stats
    assert stats.faults["cut_success"] == 3
    assert stats.faults["truncated_success"] == 1
    assert stats.faults["gzip"] == 3
    assert stats.charges == 7
    assert emulator.balance(KEY) == 100 - 2 * 7 == 100 - stats.credits_charged
    assert sum(r.credits for r in stats.generate_records) == stats.credits_charged


def test_charged_when_the_client_hangs_up_over_a_socket() -> None:
    pytest.importorskip("uvicorn")
    faults = Faults(latency=30.0, charge_on_hangup_rate=1.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults)
    with serve(emulator) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.base_url}{GENERATE}",
                json={"prompt": "x", "num": 2},
                headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": "gone"},
                timeout=httpx.Timeout(5.0, read=0.2),
            )
        # The server notices the hang-up (not the server stopping) and charges anyway.
        deadline = time.monotonic() + 10
        while emulator.stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.stats.in_flight == 0
    (record,) = emulator.stats.generate_records
    assert record.client_left
    assert record.faults == ("charged_after_hangup",)
    assert emulator.balance(KEY) == 96
    assert emulator.stats.credits_by_idempotency_key == {"gone": 4}


def test_stopping_does_not_wait_for_slow_requests() -> None:
    pytest.importorskip("uvicorn")
    emulator = Emulator(faults=Faults(latency=30.0))
    result: list[httpx.Response] = []

    def slow_request(base_url: str) -> None:
        result.append(
            httpx.post(
                f"{base_url}{GENERATE}",
                json={"prompt": "x"},
                headers={"Authorization": "Bearer k"},
                timeout=20,
            )
        )

    with serve(emulator) as server:
        thread = threading.Thread(target=slow_request, args=(server.base_url,))
        thread.start()
        deadline = time.monotonic() + 10
        while emulator.stats.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.stats.in_flight == 1
        start = time.monotonic()
    assert time.monotonic() - start < 3.0
    thread.join(5)
    assert result[0].status_code == 503
    assert emulator.stats.credits_charged == 0
    assert emulator.stats.in_flight == 0


def test_serve_refuses_a_taken_port() -> None:
    pytest.importorskip("uvicorn")
    with serve() as first, pytest.raises(OSError, match="in use"), serve(port=first.port):
        pass


def test_serve_without_uvicorn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ModuleNotFoundError, match=r"nanobanana-async\[emulator\]"), serve():
        pass


def test_module_runs_in_the_foreground_until_interrupted() -> None:
    pytest.importorskip("uvicorn")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanobanana_async.emulator", "--port", "0", "--credits", "4",
         "--latency", "0.01-0.02", "--seed", "3", "--fault", "gzip=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        auth = {"Authorization": "Bearer anything"}
        with httpx.Client(base_url=base_url, headers=auth) as client:
            ok = client.post(GENERATE, json={"prompt": "x", "num": 2})
            assert ok.status_code == 200
            assert ok.headers["content-encoding"] == "gzip"
            broke = client.post(GENERATE, json={"prompt": "x"})
            assert broke.json()["message"] == "insufficient credits"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err == ""


def test_module_refuses_bad_options() -> None:
    for args in (
        ["--latency", "slow"],
        ["--fail-rate", "2"],
        ["--fail-rate", "0.6", "--drop-rate", "0.6"],
        ["--fault", "nope=0.1"],
        ["--fault", "gzip=2"],
        ["--fault", "gzip"],
        ["--fault", "truncated_success=0.6", "--drop-rate", "0.6"],
        ["--fault", "partial=0.6", "--fault", "extra=0.6"],
    ):
        with pytest.raises(SystemExit) as info:
            emulator_module.main(args)
        assert info.value.code == 2
