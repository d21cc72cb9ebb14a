"""A caller's transport= gets the same generate request with or without httpx's client send.

Generate requests to a caller's transport (``Emulator().transport()``, an ``httpx.MockTransport``)
skip ``AsyncClient.build_request``/``send`` when nothing is mocked and the client holds no
cookies: the request must be the one ``send`` would have made, cookies a response sets must
still be kept and sent, and a mock patched into httpx must still see every request.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from nanobanana_async import AsyncNanoBanana
from nanobanana_async._http.fast import is_mocked

pytestmark = pytest.mark.anyio

KEY = "nb-light-0123456789abcdef"
OK = b'{"code":0,"message":"ok","data":{"url":"https://img.example/1.png"}}'


def recording(
    seen: list[httpx.Request], headers: dict[str, str] | None = None
) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=OK, headers=headers or {})

    return httpx.MockTransport(handler)


def comparable(request: httpx.Request) -> tuple[object, ...]:
    headers = [(k, v) for k, v in request.headers.multi_items() if k != "idempotency-key"]
    return (
        request.method,
        str(request.url),
        headers,
        request.content,
        request.extensions.get("timeout"),
    )


async def test_the_light_path_sends_what_the_client_would(anyio_backend: str) -> None:
    seen: list[httpx.Request] = []
    async with AsyncNanoBanana(KEY, base_url="http://127.0.0.1:1", transport=recording(seen)) as nb:
        assert nb._requests._light is not None
        generation = await nb.generate("a banana")
        assert generation.urls == ("https://img.example/1.png",)
        light = seen[-1]
        nb._requests._light = None  # the same call through httpx's client send
        await nb.generate("a banana")
        full = seen[-1]
    assert comparable(light) == comparable(full)
    assert light.headers["idempotency-key"] != full.headers["idempotency-key"]


async def test_cookies_a_response_sets_are_kept_and_sent(anyio_backend: str) -> None:
    seen: list[httpx.Request] = []
    transport = recording(seen, {"set-cookie": "lb=node-7; Path=/"})
    async with AsyncNanoBanana(KEY, base_url="http://127.0.0.1:1", transport=transport) as nb:
        await nb.generate("one")
        assert "cookie" not in seen[0].headers
        await nb.generate("two")
        assert seen[1].headers["cookie"] == "lb=node-7"


async def test_respx_still_sees_requests_with_a_caller_transport(anyio_backend: str) -> None:
    seen: list[httpx.Request] = []
    async with AsyncNanoBanana(KEY, base_url="http://127.0.0.1:1", transport=recording(seen)) as nb:
        with respx.mock(using="httpx", assert_all_called=True) as mock:
            route = mock.post("http://127.0.0.1:1/v1/images/generate").respond(200, content=OK)
            assert is_mocked()
            await nb.generate("mocked")
            assert route.call_count == 1
    assert seen == []


def test_idempotency_keys_look_like_uuid4_hex() -> None:
    import uuid

    from nanobanana_async.generate_request import new_idempotency_key

    keys = {new_idempotency_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert uuid.UUID(hex=key).version == 4
        assert uuid.UUID(hex=key).hex == key
