"""The emulator's faults and latency: kinds, shares, seeds, and clients that give up."""

import anyio
import httpx
import pytest

from nanobanana_async.emulator import (
    Emulator,
    Faults,
    parse_latency,
)
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
