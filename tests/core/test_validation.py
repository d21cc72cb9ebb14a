"""The one place numbers a user passes are checked: the rules, their wording, and every option
that goes through them refusing the same values the same way."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from nanobanana_async import (
    AsyncNanoBanana,
    InvalidRequestError,
    Job,
    LocalLimits,
    PricingTable,
    RetryPolicy,
    SqliteStore,
)
from nanobanana_async.batch import BatchOptions, GracefulStop
from nanobanana_async.validation import (
    positive,
    positive_problem,
    seconds,
    seconds_problem,
    whole,
    whole_problem,
)

NOT_NUMBERS = [True, False, "8", None, math.nan, [1]]


@pytest.mark.parametrize("value", [*NOT_NUMBERS, 1.0, 0, -1])
def test_whole_numbers_refuse_bools_text_floats_and_small_values(value: object) -> None:
    assert whole_problem(value, 1) == f"must be an integer >= 1, got {value!r}"
    with pytest.raises(InvalidRequestError, match=r"^concurrency must be an integer >= 1") as info:
        whole(value, "concurrency", minimum=1)
    assert info.value.param == "concurrency"


def test_none_passes_only_where_the_rule_allows_it_and_the_message_says_so() -> None:
    assert whole(None, "max_credits", minimum=0, none=True) is None
    assert positive(None, "max_per_second", none=True) is None
    assert whole_problem(-1, 0, none=True) == "must be an integer >= 0 or None, got -1"
    assert positive_problem(0, none=True) == "must be a positive number or None, got 0"


@pytest.mark.parametrize("value", [*NOT_NUMBERS, 0, -0.5, math.inf])
def test_positive_numbers_are_finite_and_above_zero(value: object) -> None:
    assert positive_problem(value, unit="number of seconds") == (
        f"must be a positive number of seconds, got {value!r}"
    )


def test_seconds_may_be_zero_and_infinite_only_where_allowed() -> None:
    assert seconds(0, "grace") == 0
    assert seconds(math.inf, "grace", infinite=True) == math.inf
    assert seconds_problem(math.inf) == "must be seconds >= 0, got inf"
    for value in (*NOT_NUMBERS, -1):
        assert seconds_problem(value, infinite=True) == f"must be seconds >= 0, got {value!r}"
    assert whole(3, "n", minimum=1) == 3
    assert positive(0.5, "r") == 0.5


# Every option checked through the module, each with a value it refuses.
REFUSED: list[tuple[str, Callable[[], Any], str]] = [
    ("concurrency", lambda: BatchOptions(concurrency=True), "concurrency must be an integer"),
    ("max_credits", lambda: BatchOptions(max_credits=-1), "max_credits must be an integer"),
    # Text was a TypeError from a comparison, not the SDK's error.
    ("max_per_second", lambda: BatchOptions(max_per_second="5"), "max_per_second must be a"),  # type: ignore[arg-type]
    ("poll_interval", lambda: BatchOptions(poll_interval=math.inf), "poll_interval must be a"),
    ("limits", lambda: LocalLimits(max_per_second=True), "max_per_second must be a positive"),
    ("limits credits", lambda: LocalLimits(max_credits=2.5), "max_credits must be an integer"),  # type: ignore[arg-type]
    ("max_retries", lambda: RetryPolicy(max_retries=-1), "max_retries must be an integer >= 0"),
    ("initial_delay", lambda: RetryPolicy(initial_delay=math.nan), "initial_delay must be"),
    ("num", lambda: Job("a fox", num=0), "invalid num: must be an integer >= 1, got 0"),
    ("pricing", lambda: PricingTable({"m": -2}), "credits for 'm' must be an integer >= 0"),
    ("timeout", lambda: AsyncNanoBanana("k" * 24, timeout=-1), "timeout connect must be a"),
    ("grace", lambda: GracefulStop(grace=-1), "grace must be seconds >= 0, got -1"),
    ("store lease", lambda: SqliteStore("x.db", lease=0), "lease: must be a positive number"),
    (
        "store URL",
        lambda: SqliteStore.from_url("sqlite:///x.db?retry_window=soon"),
        "option retry_window='soon' in the job store URL is not valid: must be a number",
    ),
]


@pytest.mark.parametrize(("what", "make", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_every_option_is_refused_in_the_same_words(
    what: str, make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
