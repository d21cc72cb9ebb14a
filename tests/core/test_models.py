"""Job validation, the model and size tables, and Generation."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from nanobanana_async import (
    BASE_SIZES,
    DEFAULT_MODEL,
    DEFAULT_PRICING,
    EXTENDED_SIZES,
    MODELS,
    Generation,
    InvalidRequestError,
    Job,
    NanoBananaError,
    PricingTable,
    sizes_for,
)

# The tables of section 1 of the design, written out independently of the code.
SPEC_MODELS = (
    "gemini-2.5-flash-image",
    "gemini-2.5-flash-image-hd",
    "gemini-3.1-flash-image-preview-512",
    "gemini-3.1-flash-image-preview",
    "gemini-3.1-flash-image-preview-2k",
    "gemini-3.1-flash-image-preview-4k",
    "gemini-3-pro-image-preview",
    "gemini-3-pro-image-preview-2k",
    "gemini-3-pro-image-preview-4k",
)
SPEC_BASE_SIZES = ("1:1", "16:9", "9:16", "4:3", "3:4", "2:3", "3:2", "4:5", "5:4")
SPEC_EXTENDED_SIZES = ("21:9", "1:4", "4:1", "8:1", "1:8")
FLASH_31 = [m for m in SPEC_MODELS if m.startswith("gemini-3.1-flash")]
NOT_FLASH_31 = [m for m in SPEC_MODELS if not m.startswith("gemini-3.1-flash")]


def test_tables_match_the_design() -> None:
    assert DEFAULT_MODEL == "gemini-2.5-flash-image"
    assert set(MODELS) == set(SPEC_MODELS)
    assert len(MODELS) == 9
    assert set(BASE_SIZES) == set(SPEC_BASE_SIZES)
    assert set(EXTENDED_SIZES) == set(SPEC_EXTENDED_SIZES)


def test_job_defaults() -> None:
    job = Job("a banana")
    assert job.prompt == "a banana"
    assert job.model == DEFAULT_MODEL
    assert job.image_size == "1:1"
    assert job.num == 1
    assert job.id is None


def test_job_body_is_the_documented_shape() -> None:
    job = Job("a cat", "gemini-3-pro-image-preview", "16:9", 3, id="cat-1")
    assert job.to_body() == {
        "prompt": "a cat",
        "num": 3,
        "model": "gemini-3-pro-image-preview",
        "image_size": "16:9",
    }


def test_job_is_frozen_and_hashable() -> None:
    job = Job("a banana", id="x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.prompt = "other"  # type: ignore[misc]
    assert job == Job("a banana", id="x")
    assert hash(job) == hash(Job("a banana", id="x"))
    assert job != Job("a banana", id="y")


@pytest.mark.parametrize("prompt", ["", " ", "   \t\n ", "\u3000"])
def test_empty_or_whitespace_prompt_is_refused(prompt: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job(prompt)
    assert info.value.param == "prompt"
    assert "empty" in str(info.value)


@pytest.mark.parametrize("prompt", [None, 42, b"bytes", ["a list"], 1.5])
def test_non_string_prompt_is_refused(prompt: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job(prompt)
    assert info.value.param == "prompt"
    assert type(prompt).__name__ in str(info.value)


def test_nul_in_prompt_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("a\x00b")
    assert info.value.param == "prompt"


def test_invalid_request_error_is_a_value_error_and_sdk_error() -> None:
    with pytest.raises(ValueError, match="prompt"):
        Job("")
    with pytest.raises(NanoBananaError):
        Job("")


@pytest.mark.parametrize("model", ["gemini-9", "", "GEMINI-2.5-FLASH-IMAGE", "dall-e-3"])
def test_unknown_model_is_refused_and_the_message_lists_known_models(model: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("x", model=model)
    assert info.value.param == "model"
    message = str(info.value)
    assert repr(model) in message
    for known in SPEC_MODELS:
        assert known in message


@pytest.mark.parametrize("model", [None, 3, ("gemini-2.5-flash-image",)])
def test_non_string_model_is_refused(model: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("x", model=model)
    assert info.value.param == "model"


@pytest.mark.parametrize("model", SPEC_MODELS)
@pytest.mark.parametrize("size", SPEC_BASE_SIZES)
def test_every_model_takes_every_base_size(model: str, size: str) -> None:
    assert Job("x", model=model, image_size=size).image_size == size


@pytest.mark.parametrize("model", FLASH_31)
@pytest.mark.parametrize("size", SPEC_EXTENDED_SIZES)
def test_extended_sizes_are_accepted_for_31_flash(model: str, size: str) -> None:
    assert Job("x", model=model, image_size=size).image_size == size


@pytest.mark.parametrize("model", NOT_FLASH_31)
@pytest.mark.parametrize("size", SPEC_EXTENDED_SIZES)
def test_extended_sizes_are_refused_for_other_models(model: str, size: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("x", model=model, image_size=size)
    assert info.value.param == "image_size"
    assert model in str(info.value)


@pytest.mark.parametrize("size", ["1:2", "", "1x1", "16:10", " 1:1", None, 1])
def test_unknown_size_is_refused(size: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("x", image_size=size)
    assert info.value.param == "image_size"


def test_sizes_for() -> None:
    for model in FLASH_31:
        assert set(sizes_for(model)) == set(SPEC_BASE_SIZES + SPEC_EXTENDED_SIZES)
    for model in NOT_FLASH_31:
        assert set(sizes_for(model)) == set(SPEC_BASE_SIZES)
    # A custom model of the 3.1 flash family follows the same rule.
    assert "21:9" in sizes_for("gemini-3.1-flash-image-preview-8k")
    assert "21:9" not in sizes_for("my-model")


@pytest.mark.parametrize("num", [0, -1, -100, True, False, 1.0, 2.5, "2", None])
def test_bad_num_is_refused(num: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("x", num=num)
    assert info.value.param == "num"


@pytest.mark.parametrize("num", [1, 2, 4, 100])
def test_positive_num_is_accepted(num: int) -> None:
    assert Job("x", num=num).num == num


@pytest.mark.parametrize("job_id", ["", "a\x00b", 5, b"id"])
def test_bad_id_is_refused(job_id: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Job("x", id=job_id)
    assert info.value.param == "id"


@pytest.mark.parametrize("job_id", [None, "a", "weird id/with ../slashes", "ünïcode", "🍌" * 512])
def test_good_id_is_kept(job_id: str | None) -> None:
    assert Job("x", id=job_id).id == job_id


@pytest.mark.parametrize("length", [513, 4000])
def test_an_id_longer_than_the_maximum_is_refused(length: int) -> None:
    # The job stores key rows by id: a 4,000-character id passed every check and then made
    # Postgres refuse the row, which took the whole batch down with it.
    with pytest.raises(InvalidRequestError, match="at most 512 characters") as info:
        Job("x", id="x" * length)
    assert info.value.param == "id"
    assert len(str(info.value)) < 300  # the message does not quote the whole id


def test_first_bad_field_is_named() -> None:
    # The prompt is checked before the model, the model before the size.
    with pytest.raises(InvalidRequestError) as info:
        Job("", model="nope", image_size="nope", num=0)
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as info:
        Job("x", model="nope", image_size="nope", num=0)
    assert info.value.param == "model"


def test_custom_pricing_makes_a_model_acceptable() -> None:
    with pytest.raises(InvalidRequestError):
        Job("x", model="acme-image-1")
    table = DEFAULT_PRICING.extend({"acme-image-1": 3})
    job = Job("x", model="acme-image-1", pricing=table)
    assert job.model == "acme-image-1"
    # The pricing table is only used for validation: it is not part of the job.
    assert job == Job("x", model="acme-image-1", pricing=PricingTable({"acme-image-1": 1}))
    # A custom model outside the 3.1 flash family still only takes the base sizes.
    with pytest.raises(InvalidRequestError) as info:
        Job("x", model="acme-image-1", image_size="21:9", pricing=table)
    assert info.value.param == "image_size"


def test_pricing_that_replaces_the_table_limits_the_models() -> None:
    table = PricingTable({"acme-image-1": 3})
    with pytest.raises(InvalidRequestError):
        Job("x", model=DEFAULT_MODEL, pricing=table)


def test_generation_holds_a_tuple_of_urls() -> None:
    generation = Generation(
        urls=("https://img/1.png", "https://img/2.png"),
        model=DEFAULT_MODEL,
        image_size="1:1",
        num=2,
        credits=4,
        elapsed=0.5,
    )
    assert isinstance(generation.urls, tuple)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        generation.credits = 0  # type: ignore[misc]
