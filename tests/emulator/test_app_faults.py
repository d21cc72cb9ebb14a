"""The emulator's application-level faults, in-process: wire behaviour, charges, counters.

Each fault is met at rate 1 (or over a seeded run), and checked against a twin emulator with
the same seed and no fault: the same request gets the same success body there, so a cut or
truncated body can be compared with the whole one byte for byte.
"""

import gzip
import json
from typing import Any

import anyio
import httpx
import pytest

from nanobanana_async.emulator import Emulator, Faults, GenerateRecord
from nanobanana_async.emulator import stats as emulator_stats
from nanobanana_async.emulator.faults import BAD_URL_KINDS
from nanobanana_async.emulator.images import bad_url
from nanobanana_async.pricing import DEFAULT_PRICES
from tests.emulator.inprocess import BASE, FLASH, GENERATE, KEY, client_for, generate

pytestmark = pytest.mark.anyio

PRICE = DEFAULT_PRICES["gemini-2.5-flash-image"]


async def twin_body(**body: Any) -> bytes:
    """The success body a fault-free emulator sends for the same first request."""
    async with client_for(Emulator()) as client:
        response = await generate(client, **body)
    assert response.status_code == 200
    return response.content


def has_lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def only_record(emulator: Emulator) -> GenerateRecord:
    (record,) = emulator.stats.generate_records
    return record


# -- truncated and cut successes ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_truncated_success_is_charged_and_cut_with_a_matching_length(seed: int) -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(truncated_success_rate=1.0), seed=seed)
    async with client_for(emulator) as client:
        response = await generate(client, num=2)
    whole = await twin_body(num=2)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert 0 < len(response.content) < len(whole)
    assert whole.startswith(response.content)
    with pytest.raises(json.JSONDecodeError):
        response.json()
    stats = emulator.stats
    assert emulator.balance(KEY) == 100 - 2 * PRICE
    assert (stats.credits_charged, stats.charges) == (2 * PRICE, 1)
    assert stats.faults["truncated_success"] == 1
    assert (stats.generations, stats.images_generated) == (0, 0)  # nobody could read it
    assert stats.by_status == {200: 1}
    assert only_record(emulator) == GenerateRecord(
        serial=1,
        prompt="a yellow banana",
        credits=2 * PRICE,
        images=2,
        urls=2,
        status=200,
        answered=True,
        faults=("truncated_success",),
    )


async def test_cut_success_fails_while_reading_the_body_as_over_a_socket() -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(cut_success_rate=1.0))
    whole = await twin_body()
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection") as info:
            await generate(client)
        assert f"expected {len(whole)})" in str(info.value)
        # Streamed, the status and headers arrive; the body fails where it stops.
        request = client.build_request("POST", GENERATE, json={"prompt": "a yellow banana"})
        response = await client.send(request, stream=True)
        try:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert int(response.headers["content-length"]) == len(whole)
            chunks = response.aiter_raw()
            received = await anext(chunks)
            with pytest.raises(httpx.RemoteProtocolError, match=r"received \d+ bytes"):
                await anext(chunks)
        finally:
            await response.aclose()
    assert 0 < len(received) < len(whole)
    assert whole.startswith(received)
    stats = emulator.stats
    assert emulator.balance(KEY) == 100 - 2 * PRICE
    assert stats.credits_charged == 2 * PRICE
    assert stats.faults["cut_success"] == 2
    assert stats.generations == 0
    assert stats.by_status == {200: 2}
    assert [(r.status, r.answered, r.credits) for r in stats.generate_records] == [
        (200, False, PRICE),
        (200, False, PRICE),
    ]


@pytest.mark.parametrize("seed", range(6))
async def test_success_as_5xx_carries_the_success_body_and_is_charged(seed: int) -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(success_as_5xx_rate=1.0), seed=seed)
    async with client_for(emulator) as client:
        response = await generate(client, num=2)
    assert response.status_code in (500, 502, 503)
    assert response.content == await twin_body(num=2)
    assert response.json()["code"] == 0
    assert len(response.json()["data"]["url"]) == 2
    stats = emulator.stats
    assert emulator.balance(KEY) == 100 - 2 * PRICE
    assert stats.faults["success_as_5xx"] == 1
    assert (stats.generations, stats.charges) == (0, 1)
    assert stats.by_status == {response.status_code: 1}
    assert only_record(emulator).status == response.status_code


async def test_success_as_5xx_uses_500_502_and_503() -> None:
    emulator = Emulator(faults=Faults(success_as_5xx_rate=1.0), seed=4)
    async with client_for(emulator) as client:
        statuses = {(await generate(client)).status_code for _ in range(40)}
    assert statuses == {500, 502, 503}


@pytest.mark.parametrize(
    "faults",
    [
        Faults(truncated_success_rate=1.0),
        Faults(cut_success_rate=1.0),
        Faults(success_as_5xx_rate=1.0),
    ],
)
async def test_success_outcomes_leave_refusals_alone(faults: Faults) -> None:
    emulator = Emulator(keys={KEY: 1}, faults=faults)
    async with client_for(emulator) as client:
        broke = await generate(client)
        async with client_for(emulator, key="sk-stranger") as stranger:
            denied = await generate(stranger)
    assert broke.status_code == 400
    assert broke.json() == {"code": 400, "message": "insufficient credits"}
    assert denied.status_code == 401
    assert sum(emulator.stats.faults.values()) == 0
    assert emulator.stats.credits_charged == 0


async def test_a_replay_meets_the_outcome_without_paying() -> None:
    emulator = Emulator(keys={KEY: 100}, honour_idempotency=True)
    headers = {"Idempotency-Key": "job-1"}
    async with client_for(emulator) as client:
        first = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
        emulator.faults = Faults(success_as_5xx_rate=1.0)
        again = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert again.status_code >= 500
    assert again.content == first.content
    assert emulator.balance(KEY) == 100 - PRICE
    assert emulator.stats.faults["success_as_5xx"] == 1
    assert [r.credits for r in emulator.stats.generate_records] == [PRICE, 0]


# -- odd Unicode --------------------------------------------------------------------------------


async def test_lone_surrogates_in_error_messages() -> None:
    faults = Faults(odd_unicode_rate=1.0)
    emulator = Emulator(keys={KEY: 1}, faults=faults, seed=3)
    async with client_for(emulator) as client:
        refused = await generate(client, num=3)
        emulator.faults = Faults(odd_unicode_rate=1.0, rate_limit_rate=1.0)
        limited = await generate(client)
        emulator.faults = Faults(odd_unicode_rate=1.0, server_error_rate=1.0, html_error_share=0)
        failed = await generate(client)
    for response, code, message in (
        (refused, 400, "insufficient credits"),
        (limited, 429, "rate limit exceeded"),
        (failed, 500, "server error"),
    ):
        assert response.status_code == code
        assert response.content.isascii()
        assert b"\\u" in response.content  # written as JSON escapes
        data = response.json()
        assert data["code"] == code
        assert data["message"].startswith(message + " ")
        assert has_lone_surrogate(data["message"])
        with pytest.raises(UnicodeEncodeError):
            data["message"].encode("utf-8")
    assert emulator.stats.faults["odd_unicode_message"] == 3
    assert emulator.stats.credits_charged == 0


async def test_lone_surrogates_in_urls_are_charged() -> None:
    emulator = Emulator(keys={KEY: 100}, faults=Faults(odd_unicode_rate=1.0), seed=5)
    async with client_for(emulator) as client:
        response = await generate(client, num=2)
    assert response.status_code == 200
    assert response.content.isascii()
    urls = response.json()["data"]["url"]
    assert len(urls) == 2
    for url in urls:
        assert url.startswith(f"{BASE}/images/")
        assert url.endswith(".png")
        assert has_lone_surrogate(url)
        with pytest.raises(UnicodeEncodeError):
            httpx.URL(url)  # it cannot even be requested
    stats = emulator.stats
    assert emulator.balance(KEY) == 100 - 2 * PRICE
    assert stats.faults["odd_unicode_urls"] == 1
    assert (stats.generations, stats.images_generated) == (1, 2)


# -- bad URLs -----------------------------------------------------------------------------------


def test_bad_url_kinds() -> None:
    url = f"{BASE}/images/abc_1x1_0_1.png"
    made = {kind: bad_url(kind, url) for kind in BAD_URL_KINDS}
    assert made == {
        "port_out_of_range": "http://127.0.0.1:99999/images/abc_1x1_0_1.png",
        "long_host_label": f"http://{'x' * 64}.invalid/images/abc_1x1_0_1.png",
        "broken_ipv6": "http://[::1/images/abc_1x1_0_1.png",
        "space_in_host": "http://bad host.invalid/images/abc_1x1_0_1.png",
        "no_host": "http:///images/abc_1x1_0_1.png",
        "empty": "",
        "port_zero": "http://127.0.0.1:0/images/abc_1x1_0_1.png",
        "ftp": "ftp://127.0.0.1/images/abc_1x1_0_1.png",
    }
    with pytest.raises(ValueError, match="unknown"):
        bad_url("nope", url)


async def test_bad_urls_are_charged_as_normal() -> None:
    emulator = Emulator(keys={KEY: 10_000}, faults=Faults(bad_url_rate=1.0), seed=7)
    expected = {bad_url(kind, f"{BASE}/images/x.png") for kind in BAD_URL_KINDS}
    async with client_for(emulator) as client:
        bodies = [(await generate(client, num=2)).json() for _ in range(60)]
    shapes = set()
    for body in bodies:
        assert body["code"] == 0
        for url in body["data"]["url"]:
            assert not url.startswith(f"{BASE}/images/")
            # Same form as the kind's own URL, whatever the image's name.
            shape = url.rsplit("/images/", 1)[0] + "/images/x.png" if "/images/" in url else url
            assert shape in expected
            shapes.add(shape)
    assert shapes == expected  # every kind shows up over 60 answers
    stats = emulator.stats
    assert emulator.balance(KEY) == 10_000 - 60 * 2 * PRICE
    assert stats.faults["bad_urls"] == 60
    assert (stats.generations, stats.images_generated) == (60, 120)


# -- gzip ---------------------------------------------------------------------------------------


async def test_gzip_success_and_errors_even_for_identity() -> None:
    emulator = Emulator(keys={KEY: 2}, faults=Faults(gzip_rate=1.0))
    async with client_for(emulator) as client:
        headers = {"Accept-Encoding": "identity"}
        request = client.build_request("POST", GENERATE, json={"prompt": "x"}, headers=headers)
        response = await client.send(request, stream=True)
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        refused = await client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(raw)
    assert json.loads(gzip.decompress(raw))["code"] == 0
    assert refused.status_code == 400
    assert refused.headers["content-encoding"] == "gzip"
    assert refused.json() == {"code": 400, "message": "insufficient credits"}  # httpx decodes
    assert emulator.stats.faults["gzip"] == 2
    assert emulator.stats.credits_charged == PRICE


async def test_gzip_with_a_truncated_or_cut_success() -> None:
    whole = await twin_body()
    emulator = Emulator(faults=Faults(gzip_rate=1.0, truncated_success_rate=1.0))
    async with client_for(emulator) as client:
        truncated = await generate(client)
    assert truncated.headers["content-encoding"] == "gzip"
    assert whole.startswith(truncated.content)  # the JSON was cut, then compressed whole
    assert len(truncated.content) < len(whole)

    emulator = Emulator(faults=Faults(gzip_rate=1.0, cut_success_rate=1.0))
    async with client_for(emulator) as client:
        request = client.build_request("POST", GENERATE, json={"prompt": "a yellow banana"})
        response = await client.send(request, stream=True)
        assert response.headers["content-encoding"] == "gzip"
        assert int(response.headers["content-length"]) == len(gzip.compress(whole, mtime=0))
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
        await response.aclose()
    assert emulator.stats.faults["cut_success"] == emulator.stats.faults["gzip"] == 1


# -- partial and extra --------------------------------------------------------------------------


async def test_partial_answers_are_charged_per_url_returned() -> None:
    emulator = Emulator(keys={KEY: 10_000}, faults=Faults(partial_rate=1.0), seed=2)
    async with client_for(emulator) as client:
        counts = []
        for _ in range(30):
            urls = (await generate(client, num=4, model=FLASH)).json()["data"]["url"]
            assert isinstance(urls, list)
            counts.append(len(urls))
        single = (await generate(client, num=1)).json()["data"]["url"]
    assert set(counts) == {1, 2, 3}
    assert isinstance(single, str)  # num == 1 cannot be partial
    stats = emulator.stats
    returned = sum(counts)
    charged = DEFAULT_PRICES[FLASH] * returned + PRICE
    assert emulator.balance(KEY) == 10_000 - charged
    assert stats.credits_charged == charged
    assert stats.faults["partial"] == 30
    assert stats.images_missing == 4 * 30 - returned
    assert stats.images_generated == returned + 1
    assert [r.images for r in stats.generate_records] == [*counts, 1]


async def test_partial_still_needs_credits_for_num() -> None:
    emulator = Emulator(keys={KEY: 4 * PRICE - 1}, faults=Faults(partial_rate=1.0))
    async with client_for(emulator) as client:
        response = await generate(client, num=4)
    assert response.json() == {"code": 400, "message": "insufficient credits"}
    assert emulator.stats.faults["partial"] == 0


async def test_extra_answers_are_charged_for_num() -> None:
    emulator = Emulator(keys={KEY: 10_000}, faults=Faults(extra_rate=1.0), seed=2)
    async with client_for(emulator) as client:
        counts = []
        for _ in range(30):
            urls = (await generate(client, num=3)).json()["data"]["url"]
            counts.append(len(urls))
            assert len(set(urls)) == len(urls)
        single = (await generate(client, num=1)).json()["data"]["url"]
        image = await client.get(urls[-1])  # the extra images are served
    assert set(counts) == {4, 5, 6}
    assert isinstance(single, list)
    assert len(single) == 2
    assert image.status_code == 200
    stats = emulator.stats
    assert emulator.balance(KEY) == 10_000 - PRICE * (30 * 3 + 1)
    assert stats.faults["extra"] == 31
    assert stats.images_extra == sum(counts) - 30 * 3 + 1
    assert stats.images_generated == 30 * 3 + 1


async def test_partial_and_extra_share_one_draw() -> None:
    emulator = Emulator(faults=Faults(partial_rate=0.5, extra_rate=0.5), seed=9)
    async with client_for(emulator) as client:
        for _ in range(40):
            await generate(client, num=2)
    faults = emulator.stats.faults
    assert faults["partial"] + faults["extra"] == 40
    assert faults["partial"] > 5
    assert faults["extra"] > 5


# -- charged when the client hangs up -----------------------------------------------------------


async def test_charged_even_when_the_client_hangs_up() -> None:
    faults = Faults(latency=5.0, charge_on_hangup_rate=1.0, partial_rate=1.0)
    emulator = Emulator(keys={KEY: 100}, faults=faults)
    async with client_for(emulator) as client:
        with anyio.move_on_after(0.05) as scope:
            await generate(client, num=3)
    assert scope.cancelled_caught
    stats = emulator.stats
    assert stats.in_flight == 0
    record = only_record(emulator)
    assert record.client_left
    assert (record.status, record.answered) == (None, False)
    assert record.credits == emulator.stats.credits_charged == 100 - emulator.balance(KEY)
    assert record.credits == PRICE * record.images > 0
    assert set(record.faults) == {"partial", "charged_after_hangup"}
    assert stats.faults["charged_after_hangup"] == 1
    assert stats.generations == 0
    assert stats.by_status == {}


async def test_a_refused_client_that_hangs_up_is_not_charged() -> None:
    faults = Faults(latency=5.0, charge_on_hangup_rate=1.0)
    emulator = Emulator(keys={KEY: 1}, faults=faults)
    async with client_for(emulator) as client:
        with anyio.move_on_after(0.05):
            await generate(client)
    assert emulator.balance(KEY) == 1
    assert emulator.stats.faults["charged_after_hangup"] == 0
    assert only_record(emulator).client_left


# -- the ledger stays exact ---------------------------------------------------------------------

EVERYTHING = Faults(
    server_error_rate=0.1,
    rate_limit_rate=0.1,
    drop_rate=0.1,
    truncated_success_rate=0.1,
    cut_success_rate=0.1,
    success_as_5xx_rate=0.1,
    gzip_rate=0.3,
    odd_unicode_rate=0.3,
    bad_url_rate=0.3,
    partial_rate=0.2,
    extra_rate=0.2,
    charge_on_hangup_rate=0.5,
)


async def run_everything(emulator: Emulator, count: int) -> list[str]:
    """Send ``count`` requests (each its own Idempotency-Key); what each client saw."""
    seen = []
    async with client_for(emulator) as client:
        for i in range(count):
            headers = {"Idempotency-Key": f"call-{i}"}
            body = {"prompt": f"prompt {i}", "num": 1 + i % 4}
            try:
                response = await client.post(GENERATE, json=body, headers=headers)
            except httpx.RemoteProtocolError as exc:
                seen.append(f"error {exc}")
            else:
                seen.append(f"{response.status_code} {response.content!r}")
    return seen


async def test_every_charge_is_attributed_to_a_request() -> None:
    emulator = Emulator(keys={KEY: 100_000}, faults=EVERYTHING, seed=21)
    await run_everything(emulator, 200)
    stats = emulator.stats
    records = stats.generate_records
    assert [r.serial for r in records] == list(range(1, 201))
    assert stats.credits_charged == 100_000 - emulator.balance(KEY)
    assert stats.credits_charged == sum(r.credits for r in records)
    assert stats.charges == sum(r.credits > 0 for r in records)
    by_key = {r.idempotency_key: r.credits for r in records if r.credits}
    assert stats.credits_by_idempotency_key == by_key
    for record in records:
        assert record.credits == PRICE * record.images
        if record.credits == 0:
            assert not {"truncated_success", "cut_success", "success_as_5xx"} & set(record.faults)
    assert all(stats.faults[kind] for kind in stats.faults if kind != "charged_after_hangup")
    assert (
        stats.generations
        + stats.faults["dropped_after_charge"]
        + stats.faults["truncated_success"]
        + stats.faults["cut_success"]
        + stats.faults["success_as_5xx"]
        == stats.charges
    )


async def test_new_faults_are_deterministic_for_a_seed() -> None:
    first = await run_everything(Emulator(faults=EVERYTHING, seed=4), 80)
    again = await run_everything(Emulator(faults=EVERYTHING, seed=4), 80)
    other = await run_everything(Emulator(faults=EVERYTHING, seed=5), 80)
    assert first == again
    assert first != other


# The outcomes of these faults for seed 11, as the emulator gave them before the newer faults
# existed ("$": the request was charged). They must never change.
OLD_FAULTS = Faults(server_error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.2)
_OLD = """
    500 200$ 500 drop 200$ drop$ drop 200$ 200$ 200$ drop$ 502 drop$ drop$ 500 500 500 503
    200$ 200$ 429 429 200$ 200$ 200$ drop$ 200$ 200$ drop 200$ drop$ 200$ drop$ drop$ 200$
    503 drop drop drop$ 429
"""
OLD_SEQUENCE = _OLD.split()


async def old_outcomes(faults: Faults) -> list[str]:
    emulator = Emulator(faults=faults, seed=11)
    seen = []
    async with client_for(emulator, key="k") as client:
        for _ in range(len(OLD_SEQUENCE)):
            before = emulator.balance("k")
            try:
                response = await client.post(GENERATE, json={"prompt": "p"})
                outcome = str(response.status_code)
            except httpx.RemoteProtocolError:
                outcome = "drop"
            seen.append(outcome + ("$" if emulator.balance("k") < before else ""))
    return seen


async def test_the_older_sequence_is_unchanged() -> None:
    assert await old_outcomes(OLD_FAULTS) == OLD_SEQUENCE
    # Modifiers leave every outcome, and every charge, where it was.
    modifiers = Faults(
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        drop_rate=0.2,
        gzip_rate=0.5,
        odd_unicode_rate=0.5,
        bad_url_rate=0.5,
        partial_rate=0.3,
        extra_rate=0.3,
        charge_on_hangup_rate=0.5,
    )
    assert await old_outcomes(modifiers) == OLD_SEQUENCE
    # New outcomes only take requests that the older ones left alone.
    outcomes = Faults(
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        drop_rate=0.2,
        truncated_success_rate=0.1,
        cut_success_rate=0.1,
        success_as_5xx_rate=0.1,
    )
    seen = await old_outcomes(outcomes)
    for old, new in zip(OLD_SEQUENCE, seen, strict=True):
        if old != "200$":
            assert new == old
        else:
            assert new in ("200$", "drop$", "500$", "502$", "503$")
    assert seen != OLD_SEQUENCE


# -- counters -----------------------------------------------------------------------------------


async def test_stats_route_carries_the_new_counters_and_records() -> None:
    faults = Faults(partial_rate=1.0, gzip_rate=1.0)
    emulator = Emulator(faults=faults)
    async with client_for(emulator) as client:
        await client.post(
            GENERATE, json={"prompt": "x", "num": 3}, headers={"Idempotency-Key": "a"}
        )
        data = (await client.get("/_emulator/stats")).json()
    assert data["charges"] == 1
    assert data["images_missing"] == 3 - data["images_generated"]
    assert data["images_extra"] == 0
    assert data["credits_by_idempotency_key"] == {"a": data["credits_charged"]}
    (record,) = data["generate_records"]
    assert record == {
        "serial": 1,
        "prompt": "x",
        "idempotency_key": "a",
        "credits": data["credits_charged"],
        "images": data["images_generated"],
        "urls": data["images_generated"],
        "status": 200,
        "answered": True,
        "client_left": False,
        "faults": ["partial", "gzip"],
    }


async def test_generate_records_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator_stats, "MAX_GENERATE_RECORDS", 3)
    emulator = Emulator()
    async with client_for(emulator) as client:
        for _ in range(5):
            await generate(client)
    assert [r.serial for r in emulator.stats.generate_records] == [1, 2, 3]
    assert emulator.stats.credits_charged == 5 * PRICE
