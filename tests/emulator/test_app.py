"""The emulator's routes: success, validation, keys and credits, idempotency, counters.

The ASGI app is driven in-process through ``Emulator.transport()`` on asyncio and Trio.
"""

from typing import Any

import anyio
import httpx
import pytest

from nanobanana_async.emulator import (
    FAULT_KINDS,
    Emulator,
    EmulatorStats,
    Faults,
)
from nanobanana_async.emulator import stats as emulator_stats
from nanobanana_async.models import BASE_SIZES, EXTENDED_SIZES, MODELS
from nanobanana_async.pricing import DEFAULT_PRICES
from tests.emulator.inprocess import (
    BASE,
    FLASH,
    GENERATE,
    KEY,
    client_for,
    generate,
)

anyio_test = pytest.mark.anyio


# -- success -----------------------------------------------------------------------------------


@anyio_test
async def test_one_image_is_a_string_url_and_is_charged() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with client_for(emulator) as client:
        response = await generate(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == 0
    assert body["message"] == "ok"
    url = body["data"]["url"]
    assert isinstance(url, str)
    assert url.startswith(f"{BASE}/images/")
    assert url.endswith(".png")
    price = DEFAULT_PRICES["gemini-2.5-flash-image"]
    assert emulator.balance(KEY) == 100 - price
    stats = emulator.stats
    assert (stats.requests, stats.generate_requests, stats.generations) == (1, 1, 1)
    assert (stats.images_generated, stats.credits_charged) == (1, price)
    assert stats.by_status == {200: 1}
    assert len(stats.request_start_times) == 1


@anyio_test
async def test_several_images_are_a_list_of_distinct_urls() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with client_for(emulator) as client:
        response = await generate(client, num=3, model=FLASH, image_size="21:9")
    urls = response.json()["data"]["url"]
    assert isinstance(urls, list)
    assert len(set(urls)) == 3
    assert emulator.balance(KEY) == 100 - 3 * DEFAULT_PRICES[FLASH]
    assert emulator.stats.images_generated == 3
    assert emulator.stats.generations == 1


@anyio_test
async def test_each_generation_gets_its_own_urls() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        first = (await generate(client)).json()["data"]["url"]
        second = (await generate(client)).json()["data"]["url"]
    assert first != second


@anyio_test
async def test_every_model_and_its_sizes_are_accepted() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        for model in MODELS:
            sizes = BASE_SIZES + (EXTENDED_SIZES if model.startswith("gemini-3.1-flash") else ())
            for size in sizes:
                response = await generate(client, model=model, image_size=size)
                assert response.json()["code"] == 0, (model, size)
    assert emulator.stats.credits_charged == sum(
        DEFAULT_PRICES[m] * (14 if m.startswith("gemini-3.1-flash") else 9) for m in MODELS
    )


# -- validation, auth, credits -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "JSON"),
        (b'{"prompt": "x"', "JSON"),
        (b"[1, 2]", "object"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"{}", "prompt"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": "   "}', "prompt"),
        (b'{"prompt": 42}', "prompt"),
        (b'{"prompt": null}', "prompt"),
        (b'{"prompt": "x", "num": 0}', "num"),
        (b'{"prompt": "x", "num": 11}', "num"),
        (b'{"prompt": "x", "num": "2"}', "num"),
        (b'{"prompt": "x", "num": 1.5}', "num"),
        (b'{"prompt": "x", "num": true}', "num"),
        (b'{"prompt": "x", "model": "gemini-9"}', "model"),
        (b'{"prompt": "x", "model": ["gemini-2.5-flash-image"]}', "model"),
        (b'{"prompt": "x", "image_size": "7:7"}', "image_size"),
        (b'{"prompt": "x", "image_size": "21:9"}', "image_size"),
        (
            b'{"prompt": "x", "model": "gemini-3-pro-image-preview", "image_size": "1:8"}',
            "image_size",
        ),
    ],
)
@anyio_test
async def test_invalid_requests_are_400_and_free(body: bytes, needle: str) -> None:
    emulator = Emulator(keys={KEY: 100})
    async with client_for(emulator) as client:
        response = await client.post(GENERATE, content=body)
    assert response.status_code == 400
    data = response.json()
    assert data["code"] == 400
    assert needle in data["message"]
    assert emulator.balance(KEY) == 100
    assert emulator.stats.generations == 0
    assert emulator.stats.by_status == {400: 1}


@anyio_test
async def test_max_num_is_configurable() -> None:
    emulator = Emulator(max_num=2)
    async with client_for(emulator) as client:
        assert (await generate(client, num=2)).status_code == 200
        refused = await generate(client, num=3)
    assert refused.status_code == 400
    assert "between 1 and 2" in refused.json()["message"]


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer    ", "Basic abc", KEY, "Bearer sk-other"]
)
@anyio_test
async def test_bad_or_unknown_keys_are_401(authorization: str | None) -> None:
    emulator = Emulator(keys={KEY: 100})
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client_for(emulator, key=None) as client:
        response = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "invalid API key"}
    assert emulator.stats.credits_charged == 0


@anyio_test
async def test_auth_comes_before_validation() -> None:
    async with client_for(Emulator(keys={KEY: 1}), key="wrong") as client:
        response = await client.post(GENERATE, content=b"not json")
    assert response.status_code == 401


@anyio_test
async def test_without_keys_any_key_works_and_has_its_own_ledger() -> None:
    emulator = Emulator(default_credits=10)
    async with client_for(emulator, key="alice") as alice, client_for(emulator, key="bob") as bob:
        assert (await generate(alice, num=2)).status_code == 200
        assert (await generate(bob)).status_code == 200
    assert emulator.balance("alice") == 6
    assert emulator.balance("bob") == 8
    assert emulator.balance("carol") == 10  # a key not seen yet starts full


@anyio_test
async def test_insufficient_credits_and_ledger_arithmetic() -> None:
    emulator = Emulator(keys={KEY: 10, "sk-other": 5})
    async with client_for(emulator) as client:
        assert (await generate(client, num=3)).status_code == 200  # 6
        assert emulator.balance(KEY) == 4
        refused = await generate(client, num=3)
        assert refused.status_code == 400
        assert refused.json() == {"code": 400, "message": "insufficient credits"}
        assert emulator.balance(KEY) == 4
        assert (await generate(client, num=2)).status_code == 200
        assert emulator.balance(KEY) == 0
        assert (await generate(client)).json()["message"] == "insufficient credits"
        emulator.set_balance(KEY, 2)
        assert (await generate(client)).status_code == 200
    assert emulator.balance(KEY) == 0
    assert emulator.balance("sk-other") == 5
    assert emulator.stats.credits_charged == 12
    assert emulator.stats.generations == 3
    assert emulator.stats.by_status == {200: 3, 400: 2}
    with pytest.raises(KeyError):
        emulator.balance("sk-unknown")


@anyio_test
async def test_set_balance_adds_a_key() -> None:
    emulator = Emulator(keys={})
    async with client_for(emulator) as client:
        assert (await generate(client)).status_code == 401
        emulator.set_balance(KEY, 3)
        assert (await generate(client)).status_code == 200
    assert emulator.balance(KEY) == 1
    with pytest.raises(ValueError, match="credits"):
        emulator.set_balance(KEY, -1)
    with pytest.raises(ValueError, match="key"):
        emulator.set_balance(" ", 1)


@anyio_test
async def test_custom_prices_decide_models_and_sizes() -> None:
    emulator = Emulator(prices={"house-model": 3, "gemini-3.1-flash-next": 1})
    async with client_for(emulator) as client:
        assert (await generate(client, model="house-model", image_size="16:9")).status_code == 200
        assert (await generate(client, model="house-model", image_size="1:8")).status_code == 400
        ok = await generate(client, model="gemini-3.1-flash-next", image_size="1:8", num=2)
        assert ok.status_code == 200
        # The default model is not in this table.
        assert "model" in (await generate(client)).json()["message"]
    assert emulator.stats.credits_charged == 3 + 2


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="max_num"):
        Emulator(max_num=0)
    with pytest.raises(ValueError, match="default_credits"):
        Emulator(default_credits=-1)
    with pytest.raises(ValueError, match="price"):
        Emulator(prices={"m": -2})
    with pytest.raises(ValueError, match="credits"):
        Emulator(keys={KEY: -5})


@anyio_test
async def test_errors_as_http_200() -> None:
    emulator = Emulator(keys={KEY: 2}, errors_as_http_200=True)
    async with client_for(emulator) as client:
        bad = await generate(client, num=0)
        ok = await generate(client)
        broke = await generate(client)
        async with client_for(emulator, key="nope") as stranger:
            denied = await generate(stranger)
        missing = await client.get("/v2/nothing")
    assert ok.status_code == 200
    assert ok.json()["code"] == 0
    for response, code in ((bad, 400), (broke, 400), (denied, 401)):
        assert response.status_code == 200
        assert response.json()["code"] == code
    assert missing.status_code == 404  # not the API speaking


# -- idempotency -------------------------------------------------------------------------------


@anyio_test
async def test_repeated_idempotency_key_is_charged_again_by_default() -> None:
    emulator = Emulator(keys={KEY: 100})
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        first = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        second = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        other = await client.post(
            GENERATE, json={"prompt": "x"}, headers={"Idempotency-Key": "job-2"}
        )
        await generate(client)  # no key: not tracked
    assert first.json()["data"]["url"] != second.json()["data"]["url"]
    assert other.status_code == 200
    assert emulator.stats.charged_idempotency_keys == {"job-1": 2, "job-2": 1}
    assert emulator.stats.duplicate_charges == 1
    assert emulator.balance(KEY) == 100 - 4 * 2


@anyio_test
async def test_honour_idempotency_replays_without_charging() -> None:
    emulator = Emulator(keys={KEY: 100, "sk-other-account": 100}, honour_idempotency=True)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        first = await client.post(GENERATE, json={"prompt": "x", "num": 2}, headers=headers)
        again = await client.post(GENERATE, json={"prompt": "x", "num": 2}, headers=headers)
        changed = await client.post(GENERATE, json={"prompt": "y", "num": 2}, headers=headers)
        async with client_for(emulator, key="sk-other-account") as other:
            elsewhere = await other.post(GENERATE, json={"prompt": "x", "num": 2}, headers=headers)
    assert again.content == first.content
    assert changed.status_code == 400
    assert "Idempotency-Key" in changed.json()["message"]
    assert elsewhere.status_code == 200
    assert elsewhere.content != first.content  # keys are scoped to an account
    assert emulator.balance(KEY) == 96
    stats = emulator.stats
    assert stats.idempotent_replays == 1
    assert stats.generations == 2
    assert stats.duplicate_charges == 1  # "job-1" was charged once on each account
    assert stats.charged_idempotency_keys == {"job-1": 2}


@anyio_test
async def test_honour_idempotency_makes_a_retry_after_a_drop_free() -> None:
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults, honour_idempotency=True)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        emulator.faults = Faults()
        retry = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert retry.json()["code"] == 0
    assert emulator.balance(KEY) == 98
    assert emulator.stats.charged_idempotency_keys == {"job-1": 1}
    assert emulator.stats.duplicate_charges == 0


@anyio_test
async def test_without_honour_a_retry_after_a_drop_pays_twice() -> None:
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        emulator.faults = Faults()
        await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert emulator.stats.duplicate_charges == 1
    assert emulator.balance(KEY) == 96


# -- counters ----------------------------------------------------------------------------------


@anyio_test
async def test_stats_endpoint_matches_the_counters() -> None:
    emulator = Emulator(faults=Faults(rate_limit_rate=0.5), seed=2)
    async with client_for(emulator) as client:
        for _ in range(6):
            await generate(client, num=2)
        await client.get("/nowhere")
        response = await client.get("/_emulator/stats")
    data = response.json()
    assert response.status_code == 200
    snapshot = emulator.stats.to_dict(limit=1_000)  # the route's default window
    snapshot["by_status"]["200"] -= 1  # the stats response itself
    assert data == snapshot
    assert data["page"] == {
        "offset": 0,
        "limit": 1_000,
        "sizes": {
            "generate_records": 6,
            "request_start_times": 6,
            "charged_idempotency_keys": 0,
            "credits_by_idempotency_key": 0,
        },
        "next": None,
    }
    assert data["requests"] == 8
    assert data["generate_requests"] == 6
    assert set(data["faults"]) == set(FAULT_KINDS)
    assert sum(data["by_status"].values()) == 7
    assert data["images_generated"] == 2 * data["generations"]


def test_stats_defaults() -> None:
    stats = EmulatorStats()
    assert stats.faults == dict.fromkeys(FAULT_KINDS, 0)
    assert stats.to_dict()["by_status"] == {}


@anyio_test
async def test_reset_stats() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        await generate(client)
        emulator.reset_stats()
        assert emulator.stats.requests == 0
        await generate(client)
    assert emulator.stats.generations == 1


def test_request_start_times_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator_stats, "MAX_REQUEST_START_TIMES", 3)
    emulator = Emulator()

    async def main() -> None:
        async with client_for(emulator) as client:
            for _ in range(5):
                await generate(client)

    anyio.run(main)
    assert len(emulator.stats.request_start_times) == 3
    assert emulator.stats.generate_requests == 5
    times = emulator.stats.request_start_times
    assert times == sorted(times)


@anyio_test
async def test_lifespan_is_supported() -> None:
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await Emulator()({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@anyio_test
async def test_the_stats_route_is_bounded_pages_its_records_and_counts_everything() -> None:
    # Issue 20, item 12: after many requests the route answers the last 1,000 records of each
    # list; ?offset=&limit= pages through them; the counters are complete either way.
    emulator = Emulator()
    async with client_for(emulator) as client:
        for i in range(1_200):
            body = {"prompt": "a yellow banana"}
            await client.post(GENERATE, json=body, headers={"Idempotency-Key": f"k{i}"})
        default = (await client.get("/_emulator/stats")).json()
        first = (await client.get("/_emulator/stats?offset=0&limit=500")).json()
        third = await client.get(f"/_emulator/stats?offset={first['page']['next'] + 500}&limit=500")
        none = (await client.get("/_emulator/stats?limit=0")).json()
        bad = await client.get("/_emulator/stats?limit=-1")
        twice = await client.get("/_emulator/stats?limit=1&limit=2")
    third_page = third.json()
    assert default["generate_requests"] == default["generations"] == 1_200
    assert default["idempotency_keys"] == 1_200
    assert default["credits_charged"] == 2_400
    assert len(default["generate_records"]) == 1_000
    assert [r["serial"] for r in default["generate_records"]] == list(range(201, 1_201))
    assert len(default["request_start_times"]) == 1_000
    assert list(default["charged_idempotency_keys"]) == [f"k{i}" for i in range(200, 1_200)]
    assert default["page"] == {
        "offset": 200,
        "limit": 1_000,
        "sizes": dict.fromkeys(
            (
                "generate_records",
                "request_start_times",
                "charged_idempotency_keys",
                "credits_by_idempotency_key",
            ),
            1_200,
        ),
        "next": None,
    }
    assert [r["serial"] for r in first["generate_records"]] == list(range(1, 501))
    assert first["page"]["next"] == 500
    assert [r["serial"] for r in third_page["generate_records"]] == list(range(1_001, 1_201))
    assert third_page["page"]["next"] is None
    assert none["generate_records"] == []
    assert none["generations"] == 1_200
    for refused in (bad, twice):
        assert refused.status_code == 400
        assert "limit must be one whole number" in refused.json()["message"]
    # In-process, the counters stay whole.
    assert len(emulator.stats.to_dict()["generate_records"]) == 1_200
    assert "page" not in emulator.stats.to_dict()
