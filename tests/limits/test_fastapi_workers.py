"""The FastAPI example under ``uvicorn --workers 3`` with ``NANOBANANA_LIMITS``: the workers
share one budget and one rate, as docs/scaling.md says."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import anyio
import httpx
import pytest

from nanobanana_async import RedisLimits
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.redis_server import RedisServer

from .helpers import KEY, most_in_a_window

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_uvicorn_workers_share_the_budget_and_the_rate(
    redis_server: RedisServer, redis_url: str
) -> None:
    emulator = Emulator(faults=Faults(latency=0.05))
    limits = f"{redis_url}?namespace={redis_server.namespace()}&max_credits=20&max_per_second=5"
    await RedisLimits.from_url(limits).create()
    port = _free_port()
    with serve(emulator) as upstream:
        env = {
            **os.environ,
            "NANOBANANA_API_KEY": KEY,
            "NANOBANANA_BASE_URL": upstream.base_url,
            "NANOBANANA_LIMITS": limits,
        }
        argv = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--workers", "3"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        app = await anyio.open_process(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=None
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        await http.get("/openapi.json")
                        break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline, "uvicorn did not start"
                        await anyio.sleep(0.2)
                codes: list[int] = []

                async def ask(i: int) -> None:
                    r = await http.post("/images", json={"prompt": f"p{i}"}, timeout=60)
                    codes.append(r.status_code)

                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        tg.start_soon(ask, i)
        finally:
            app.terminate()
            with anyio.fail_after(30):
                await app.wait()
            await app.aclose()
    # 2 credits a generation, 20 shared: 10 answered, the rest refused before sending.
    assert sorted(codes) == [200] * 10 + [402] * 6
    assert emulator.stats.credits_charged == 20
    assert most_in_a_window(emulator.stats.request_start_times) <= 5
