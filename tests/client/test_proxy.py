"""A proxy named in the environment (HTTP_PROXY, NO_PROXY) is honoured by the SDK's own client.

The SDK posts generate requests straight through its own h11 pool; that fast path must step
aside when httpx would route the request through a proxy.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager

import anyio
import anyio.abc
import httpx
import pytest

from nanobanana_async import AsyncNanoBanana
from nanobanana_async.endpoint import env_proxy_applies as _env_proxy_applies
from tests.support.http_server import serving

pytestmark = pytest.mark.anyio

KEY = "nb-proxy-0123456789abcdefPQRS"
API = "http://api.nanobanana.test"


class ForwardProxy:
    """A loopback 'proxy' that records each request line and answers as the API would."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self.port = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            head, _, body = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += await stream.receive()
            self.request_lines.append(lines[0])
            payload = json.dumps({"code": 0, "message": "ok", "data": {"url": API + "/i/1.png"}})
            await stream.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(payload)}\r\n\r\n{payload}".encode()
            )


def forward_proxy() -> AbstractAsyncContextManager[ForwardProxy]:
    return serving(ForwardProxy())


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_generate_goes_through_the_environments_proxy(
    anyio_backend: str, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async with forward_proxy() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with AsyncNanoBanana(KEY, base_url=API, allow_insecure_http=True) as client:
            generation = await client.generate("a lighthouse")
    assert generation.urls == (API + "/i/1.png",)
    # A forward proxy is asked for the absolute URL.
    assert proxy.request_lines == [f"POST {API}/v1/images/generate HTTP/1.1"]


async def test_no_proxy_keeps_the_api_off_the_proxy(
    anyio_backend: str, no_proxy_env: pytest.MonkeyPatch
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    no_proxy_env.setenv("NO_PROXY", "api.nanobanana.test")
    assert not _env_proxy_applies(httpx.URL(API + "/v1/images/generate"))
    no_proxy_env.delenv("NO_PROXY")
    assert _env_proxy_applies(httpx.URL(API + "/v1/images/generate"))
    assert not _env_proxy_applies(httpx.URL("https://api.nanobanana.test/v1/images/generate"))
    # A proxy cannot reach this machine's loopback: an emulator there is always reached directly.
    assert not _env_proxy_applies(httpx.URL("http://127.0.0.1:8000/v1/images/generate"))
    assert not _env_proxy_applies(httpx.URL("http://localhost:8000/v1/images/generate"))
