"""PricingTable, DEFAULT_PRICING and credit estimates."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from nanobanana_async import (
    DEFAULT_MODEL,
    DEFAULT_PRICING,
    CreditEstimate,
    InvalidRequestError,
    Job,
    PricingTable,
)

# Section 1 of the design, written out independently of the code.
SPEC_PRICES = {
    "gemini-2.5-flash-image": 2,
    "gemini-2.5-flash-image-hd": 5,
    "gemini-3.1-flash-image-preview-512": 4,
    "gemini-3.1-flash-image-preview": 4,
    "gemini-3.1-flash-image-preview-2k": 6,
    "gemini-3.1-flash-image-preview-4k": 8,
    "gemini-3-pro-image-preview": 8,
    "gemini-3-pro-image-preview-2k": 8,
    "gemini-3-pro-image-preview-4k": 16,
}


def test_default_prices_are_the_nine_documented_ones() -> None:
    assert dict(DEFAULT_PRICING) == SPEC_PRICES
    assert len(DEFAULT_PRICING) == 9
    for model, credits in SPEC_PRICES.items():
        assert model in DEFAULT_PRICING
        assert DEFAULT_PRICING[model] == credits
    assert "acme" not in DEFAULT_PRICING
    with pytest.raises(KeyError):
        DEFAULT_PRICING["acme"]


def test_default_table_cannot_be_mutated() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PRICING.prices["gemini-2.5-flash-image"] = 0  # type: ignore[index]
    assert DEFAULT_PRICING["gemini-2.5-flash-image"] == 2


def test_table_copies_its_input() -> None:
    source = {"a": 1}
    table = PricingTable(source)
    source["a"] = 100
    source["b"] = 2
    assert dict(table) == {"a": 1}


def test_extend_adds_and_overrides_without_touching_the_original() -> None:
    extended = DEFAULT_PRICING.extend({"acme-image-1": 3, "gemini-2.5-flash-image": 1})
    assert extended["acme-image-1"] == 3
    assert extended["gemini-2.5-flash-image"] == 1
    assert extended["gemini-3-pro-image-preview-4k"] == 16
    assert len(extended) == 10
    assert DEFAULT_PRICING["gemini-2.5-flash-image"] == 2
    assert "acme-image-1" not in DEFAULT_PRICING


def test_replace_keeps_only_the_given_models() -> None:
    table = PricingTable({"acme-image-1": 3})
    assert dict(table) == {"acme-image-1": 3}
    assert DEFAULT_MODEL not in table


def test_zero_price_is_allowed() -> None:
    assert PricingTable({"free": 0})["free"] == 0


@pytest.mark.parametrize(
    "prices",
    [
        {"m": -1},
        {"m": 1.5},
        {"m": "2"},
        {"m": True},
        {"m": None},
        {"": 1},
        {3: 1},
    ],
)
def test_bad_values_are_refused(prices: dict[Any, Any]) -> None:
    with pytest.raises(InvalidRequestError) as info:
        PricingTable(prices)
    assert info.value.param == "pricing"
    with pytest.raises(InvalidRequestError):
        DEFAULT_PRICING.extend(prices)


@pytest.mark.parametrize("prices", [[("m", 1)], "m=1", 3, None])
def test_non_mapping_is_refused(prices: Any) -> None:
    with pytest.raises(InvalidRequestError):
        PricingTable(prices)


def test_from_file_good(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"acme-image-1": 7, "gemini-2.5-flash-image": 3}))
    table = PricingTable.from_file(path)
    assert dict(table) == {"acme-image-1": 7, "gemini-2.5-flash-image": 3}
    assert dict(PricingTable.from_file(str(path))) == dict(table)


def test_from_file_missing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(InvalidRequestError) as info:
        PricingTable.from_file(path)
    assert info.value.param == "pricing"
    assert "nope.json" in str(info.value)


@pytest.mark.parametrize("text", ["{", "", "not json", "{'a': 1}"])
def test_from_file_bad_json(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(InvalidRequestError) as info:
        PricingTable.from_file(path)
    assert info.value.param == "pricing"
    assert "JSON" in str(info.value)


@pytest.mark.parametrize(
    "data", [{"m": -2}, {"m": "cheap"}, {"m": 1.5}, [1, 2], "prices", {"m": None}]
)
def test_from_file_bad_values(tmp_path: pathlib.Path, data: Any) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidRequestError) as info:
        PricingTable.from_file(path)
    assert info.value.param == "pricing"


def test_from_file_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(b'{"m\xff": 1}')
    with pytest.raises(InvalidRequestError):
        PricingTable.from_file(path)


def test_credits_is_price_times_num() -> None:
    assert DEFAULT_PRICING.credits(Job("x", "gemini-3-pro-image-preview-4k", num=3)) == 48
    assert DEFAULT_PRICING.credits(Job("x", "gemini-2.5-flash-image")) == 2


def test_credits_for_an_unpriced_model_is_refused() -> None:
    job = Job("x", "acme-image-1", pricing={"acme-image-1": 1})
    with pytest.raises(InvalidRequestError) as info:
        DEFAULT_PRICING.credits(job)
    assert info.value.param == "model"
    assert "acme-image-1" in str(info.value)


def test_estimate_by_model() -> None:
    jobs: list[Job | str] = [
        Job("a", "gemini-2.5-flash-image", num=2),
        Job("b", "gemini-3-pro-image-preview-4k"),
        Job("c", "gemini-3.1-flash-image-preview-2k", "21:9", num=4),
        "a plain prompt",
        Job("d", "gemini-3-pro-image-preview-4k", num=2),
    ]
    estimate = DEFAULT_PRICING.estimate(jobs)
    assert isinstance(estimate, CreditEstimate)
    expected_by_model = {
        "gemini-2.5-flash-image": 2 * 2 + 2,
        "gemini-3-pro-image-preview-4k": 16 + 16 * 2,
        "gemini-3.1-flash-image-preview-2k": 6 * 4,
    }
    assert dict(estimate.by_model) == expected_by_model
    assert estimate.total == sum(expected_by_model.values())
    assert estimate.jobs == 5
    assert estimate.images == 2 + 1 + 4 + 1 + 2


def test_estimate_consumes_a_generator_once() -> None:
    estimate = DEFAULT_PRICING.estimate(f"prompt {i}" for i in range(10))
    assert estimate.total == 20
    assert estimate.jobs == 10


def test_estimate_of_nothing() -> None:
    estimate = DEFAULT_PRICING.estimate([])
    assert estimate.total == 0
    assert dict(estimate.by_model) == {}
    assert estimate.jobs == 0


def test_estimate_with_custom_prices() -> None:
    table = DEFAULT_PRICING.extend({"acme-image-1": 10, "gemini-2.5-flash-image": 1})
    jobs: list[Job | str] = [Job("a", "acme-image-1", num=2, pricing=table), "b"]
    estimate = table.estimate(jobs)
    assert dict(estimate.by_model) == {"acme-image-1": 20, "gemini-2.5-flash-image": 1}
    assert estimate.total == 21


def test_estimate_refuses_non_jobs() -> None:
    with pytest.raises(InvalidRequestError):
        DEFAULT_PRICING.estimate([42])  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError):
        DEFAULT_PRICING.estimate([""])
