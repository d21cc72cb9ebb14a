"""The emulator's faults and latency: kinds, shares, seeds, and clients that give up."""

import re

import anyio
import attrs
import httpx
import pytest

from nanobanana_async.emulator import (
    FAULT_RATES,
    Emulator,
    Faults,
    parse_fault,
    parse_latency,
    with_fault_options,
)
from nanobanana_async.emulator.faults import Fault, FaultDraws, Plan
from tests.emulator.inprocess import (
    KEY,
    client_for,
    generate,
)

anyio_test = pytest.mark.anyio


# -- faults ------------------------------------------------------------------------------------


@anyio_test
async def test_json_server_errors() -> None:
    emulator = Emulator(faults=Faults(server_error_rate=1.0, html_error_share=0.0))
    async with client_for(emulator) as client:
        responses = [await generate(client) for _ in range(5)]
    for response in responses:
        assert response.status_code == 500
        assert response.json() == {"code": 500, "message": "server error"}
    assert emulator.stats.faults["server_error_json"] == 5
    assert emulator.stats.credits_charged == 0
    assert emulator.stats.generations == 0


@anyio_test
async def test_non_json_server_errors() -> None:
    emulator = Emulator(faults=Faults(server_error_rate=1.0, html_error_share=1.0), seed=3)
    async with client_for(emulator) as client:
        responses = [await generate(client) for _ in range(30)]
    statuses = {r.status_code for r in responses}
    assert statuses == {502, 503}
    for response in responses:
        if response.status_code == 502:
            assert response.headers["content-type"].startswith("text/html")
            assert b"502 Bad Gateway" in response.content
        else:
            assert response.content == b""
    assert emulator.stats.faults["server_error_html"] == 30
    assert emulator.stats.by_status[502] + emulator.stats.by_status[503] == 30


@anyio_test
async def test_errors_as_http_200_leaves_non_json_errors_alone() -> None:
    faults = Faults(server_error_rate=1.0, html_error_share=1.0)
    emulator = Emulator(faults=faults, errors_as_http_200=True)
    async with client_for(emulator) as client:
        assert (await generate(client)).status_code in (502, 503)


@pytest.mark.parametrize(("retry_after", "seconds", "ms"), [(1.5, "2", "1500"), (0.01, "1", "10")])
@anyio_test
async def test_rate_limited(retry_after: float, seconds: str, ms: str) -> None:
    emulator = Emulator(faults=Faults(rate_limit_rate=1.0, retry_after=retry_after))
    async with client_for(emulator) as client:
        response = await generate(client)
    assert response.status_code == 429
    assert response.json()["code"] == 429
    assert response.headers["retry-after"] == seconds
    assert response.headers["retry-after-ms"] == ms
    assert emulator.stats.faults["rate_limited"] == 1
    assert emulator.stats.credits_charged == 0


@anyio_test
async def test_drop_before_charge() -> None:
    emulator = Emulator(keys={KEY: 10}, faults=Faults(drop_rate=1.0, drop_after_charge_share=0.0))
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await generate(client)
    assert emulator.balance(KEY) == 10
    assert emulator.stats.faults["dropped_before_charge"] == 1
    assert emulator.stats.by_status == {}
    assert emulator.stats.in_flight == 0


@anyio_test
async def test_drop_after_charge() -> None:
    emulator = Emulator(keys={KEY: 10}, faults=Faults(drop_rate=1.0, drop_after_charge_share=1.0))
    async with client_for(emulator) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await generate(client, num=2)
    assert emulator.balance(KEY) == 6
    stats = emulator.stats
    assert stats.faults["dropped_after_charge"] == 1
    assert stats.credits_charged == 4
    assert (stats.generations, stats.images_generated) == (0, 0)  # nobody got an answer
    assert stats.by_status == {}
    assert stats.in_flight == 0


@anyio_test
async def test_a_drop_planned_after_a_refusal_charges_nothing() -> None:
    faults = Faults(drop_rate=1.0, drop_after_charge_share=1.0)
    emulator = Emulator(keys={KEY: 10}, faults=faults)
    async with client_for(emulator, key="wrong") as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await generate(client)
    assert emulator.stats.faults["dropped_before_charge"] == 1
    assert emulator.stats.faults["dropped_after_charge"] == 0
    assert emulator.balance(KEY) == 10


async def outcomes(emulator: Emulator, count: int) -> list[str]:
    seen = []
    async with client_for(emulator) as client:
        for _ in range(count):
            try:
                response = await generate(client)
            except httpx.RemoteProtocolError:
                seen.append("drop")
            else:
                seen.append(str(response.status_code))
    return seen


@anyio_test
async def test_faults_are_deterministic_for_a_seed() -> None:
    faults = Faults(server_error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.2)
    first = await outcomes(Emulator(faults=faults, seed=11), 60)
    again = await outcomes(Emulator(faults=faults, seed=11), 60)
    other = await outcomes(Emulator(faults=faults, seed=12), 60)
    assert first == again
    assert first != other
    assert {"200", "429", "drop", "500"} <= set(first)
    # Turning latency on does not change which requests fail.
    slow = Faults(server_error_rate=0.2, rate_limit_rate=0.2, drop_rate=0.2, latency=(0, 0.001))
    assert await outcomes(Emulator(faults=slow, seed=11), 60) == first


@anyio_test
async def test_fault_shares_are_roughly_right() -> None:
    emulator = Emulator(faults=Faults(server_error_rate=0.25, rate_limit_rate=0.1), seed=5)
    seen = await outcomes(emulator, 800)
    assert 150 < sum(s in ("500", "502", "503") for s in seen) < 250
    assert 50 < seen.count("429") < 110
    counted = sum(emulator.stats.faults.values())
    assert counted == sum(s != "200" for s in seen)


@anyio_test
async def test_faults_can_be_changed_mid_test() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        assert (await generate(client)).status_code == 200
        emulator.faults = Faults(server_error_rate=1.0, html_error_share=0.0)
        assert (await generate(client)).status_code == 500
        emulator.faults = Faults()
        assert (await generate(client)).status_code == 200


def test_faults_are_validated() -> None:
    for bad in (
        {"server_error_rate": 1.5},
        {"rate_limit_rate": -0.1},
        {"drop_rate": float("nan")},
        {"html_error_share": 2},
        {"server_error_rate": 0.6, "drop_rate": 0.6},
        {"retry_after": -1},
        {"latency": -0.1},
        {"latency": (0.3, 0.1)},
        {"latency": (0.1, float("inf"))},
        {"latency": "0.1"},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 -- one message per field
            Faults(**bad)
    assert Faults(latency=None).latency == 0.0
    assert Faults(latency=[0.1, 0.2]).latency == (0.1, 0.2)
    assert Faults(latency=1).latency == 1.0
    assert Faults(server_error_rate=0.5, rate_limit_rate=0.5).rate_limit_rate == 0.5


@pytest.mark.parametrize(
    ("text", "expected"), [("0.1", 0.1), (" 2 ", 2.0), ("0.05-0.2", (0.05, 0.2)), ("0-0", (0, 0))]
)
def test_parse_latency(text: str, expected: float | tuple[float, float]) -> None:
    assert parse_latency(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-1", "0.2-0.1", "1-2-3", "nan", "inf", "0.1-"])
def test_parse_latency_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"seconds|low to high"):
        parse_latency(text)


# -- latency and concurrency -------------------------------------------------------------------


@anyio_test
async def test_fixed_latency() -> None:
    emulator = Emulator(faults=Faults(latency=0.2))
    async with client_for(emulator) as client:
        start = anyio.current_time()
        response = await generate(client)
        elapsed = anyio.current_time() - start
    assert response.status_code == 200
    assert 0.18 <= elapsed < 2.0


@anyio_test
async def test_latency_range() -> None:
    emulator = Emulator(faults=Faults(latency=(0.05, 0.1)))
    async with client_for(emulator) as client:
        start = anyio.current_time()
        for _ in range(3):
            await generate(client)
        elapsed = anyio.current_time() - start
    assert 0.14 <= elapsed < 2.0


@anyio_test
async def test_in_flight_counts_concurrent_requests() -> None:
    emulator = Emulator(faults=Faults(latency=0.3))
    async with client_for(emulator) as client, anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(generate, client)
        await anyio.sleep(0.1)
        assert emulator.stats.in_flight == 5
    assert emulator.stats.in_flight == 0
    assert emulator.stats.max_in_flight == 5
    assert emulator.stats.generations == 5


@anyio_test
async def test_a_client_that_gives_up_is_not_charged() -> None:
    emulator = Emulator(keys={KEY: 10}, faults=Faults(latency=5.0))
    async with client_for(emulator) as client:
        start = anyio.current_time()
        with anyio.move_on_after(0.1):
            await generate(client)
        assert anyio.current_time() - start < 1.0
    assert emulator.stats.in_flight == 0
    assert emulator.balance(KEY) == 10
    assert emulator.stats.generate_requests == 1


# -- the newer faults: validation, options, plans ---------------------------------------------

NEW_RATES = (
    "truncated_success_rate",
    "cut_success_rate",
    "success_as_5xx_rate",
    "gzip_rate",
    "odd_unicode_rate",
    "bad_url_rate",
    "partial_rate",
    "extra_rate",
    "charge_on_hangup_rate",
)


def test_new_faults_default_to_off() -> None:
    faults = Faults()
    assert all(getattr(faults, name) == 0.0 for name in NEW_RATES)
    assert set(NEW_RATES) < set(FAULT_RATES)


@pytest.mark.parametrize("name", NEW_RATES)
@pytest.mark.parametrize("value", [-0.1, 1.01, float("nan"), True, "0.5"])
def test_new_rates_are_shares(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        Faults(**{name: value})  # type: ignore[arg-type]


def test_outcome_rates_add_up_to_at_most_one() -> None:
    with pytest.raises(ValueError, match="outcome rates"):
        Faults(drop_rate=0.5, truncated_success_rate=0.3, success_as_5xx_rate=0.3)
    with pytest.raises(ValueError, match="outcome rates"):
        Faults(truncated_success_rate=0.5, cut_success_rate=0.6)
    full = Faults(
        server_error_rate=0.2,
        rate_limit_rate=0.2,
        drop_rate=0.2,
        truncated_success_rate=0.2,
        cut_success_rate=0.1,
        success_as_5xx_rate=0.1,
    )
    assert full.success_as_5xx_rate == 0.1
    # Modifiers are not shares of the same requests: each may be 1.
    Faults(server_error_rate=1.0, gzip_rate=1.0, odd_unicode_rate=1.0, bad_url_rate=1.0,
           charge_on_hangup_rate=1.0, partial_rate=1.0)  # fmt: skip


def test_partial_and_extra_add_up_to_at_most_one() -> None:
    with pytest.raises(ValueError, match="partial_rate \\+ extra_rate"):
        Faults(partial_rate=0.6, extra_rate=0.5)
    assert Faults(partial_rate=0.5, extra_rate=0.5).extra_rate == 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gzip=0.1", ("gzip_rate", 0.1)),
        ("gzip_rate=1", ("gzip_rate", 1.0)),
        (" truncated-success = 0.5 ", ("truncated_success_rate", 0.5)),
        ("html_error_share=0", ("html_error_share", 0.0)),
        ("drop=0.2", ("drop_rate", 0.2)),
    ],
)
def test_parse_fault(text: str, expected: tuple[str, float]) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("gzip", "NAME=RATE"),
        ("=0.1", "NAME=RATE"),
        ("latency=0.1", "unknown fault 'latency'; known faults: server_error,"),
        ("retry_after=2", "unknown fault"),
        ("nope=0.1", "charge_on_hangup"),
        ("gzip=2", "gzip_rate must be a number from 0 to 1"),
        ("gzip=much", "got 'much'"),
        ("gzip=nan", "from 0 to 1"),
    ],
)
def test_parse_fault_refuses(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_fault(text)


def test_with_fault_options() -> None:
    base = Faults(drop_rate=0.1, latency=0.5)
    faults = with_fault_options(base, ["gzip=0.3", "partial=0.2", "gzip=0.4", "drop=0"])
    assert faults == Faults(latency=0.5, gzip_rate=0.4, partial_rate=0.2)
    assert with_fault_options(base, []) == base
    with pytest.raises(ValueError, match="outcome rates"):
        with_fault_options(base, ["truncated_success=0.5", "cut_success=0.5"])


def test_plan_url_counts() -> None:
    for share in (0.0, 0.3, 0.999999):
        partial, extra = (
            Plan(count="partial", count_share=share),
            Plan(count="extra", count_share=share),
        )
        assert partial.url_count(1) == 1
        assert 1 <= partial.url_count(2) <= 1
        assert 1 <= partial.url_count(10) <= 9
        assert extra.url_count(1) == 2
        assert 11 <= extra.url_count(10) <= 20
        assert Plan(count_share=share).url_count(4) == 4
    assert Plan(count="partial", count_share=0.999999).url_count(10) == 9
    assert Plan(count="extra", count_share=0.999999).url_count(10) == 20


def test_plans_are_drawn_from_their_own_stream() -> None:
    old = Faults(server_error_rate=0.3, drop_rate=0.3)
    new = attrs.evolve(old, gzip_rate=0.5, truncated_success_rate=0.2, partial_rate=0.5)
    plain, both = FaultDraws(7), FaultDraws(7)
    for _ in range(200):
        fault = plain.fault(old)
        assert both.fault(new) == fault
        plain.plan(old, fault)
        plan = both.plan(new, fault)
        if fault != Fault.NONE:
            assert plan.outcome == Fault.NONE
