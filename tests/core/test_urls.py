"""The URLs the SDK parses: options refused by name, credentials decoded, passwords hidden."""

from __future__ import annotations

import pytest

from nanobanana_async.errors import InvalidRequestError
from nanobanana_async.urls import credentials, redact_url, split_options

OPTIONS = {"max_credits": int, "max_per_second": float, "namespace": str}


def test_known_options_are_parsed_and_removed_driver_options_kept() -> None:
    url, options = split_options(
        "redis://h:6379/0?max_credits=4&db=2&namespace=a",
        what="limits",
        options=OPTIONS,
        passthrough=("db",),
    )
    assert url == "redis://h:6379/0?db=2"
    assert options == {"max_credits": 4, "namespace": "a"}


@pytest.mark.parametrize("typo", ["max_credit", "max-credits", "MAX_CREDITS", "maxCredits"])
def test_a_misspelled_option_is_refused_naming_the_known_ones(typo: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        split_options(f"redis://h/0?{typo}=4", what="limits", options=OPTIONS, passthrough=("db",))
    message = str(info.value)
    assert f"unknown option {typo!r} in the limits URL" in message
    assert "did you mean 'max_credits'?" in message
    assert "db, max_credits, max_per_second, namespace" in message


def test_an_option_given_twice_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="given twice"):
        split_options("redis://h/0?max_credits=4&max_credits=9", what="limits", options=OPTIONS)


def test_a_bad_value_is_refused_naming_the_option() -> None:
    with pytest.raises(InvalidRequestError, match=r"max_credits='four' in the limits URL"):
        split_options("redis://h/0?max_credits=four", what="limits", options=OPTIONS)


def test_a_bad_secret_value_is_not_shown() -> None:
    def never(value: str) -> str:
        raise ValueError("too short")

    with pytest.raises(InvalidRequestError) as info:
        split_options("redis://h/0?password=hunter2", what="limits", options={"password": never})
    assert "hunter2" not in str(info.value)


def test_the_message_of_an_unknown_option_hides_the_password() -> None:
    with pytest.raises(InvalidRequestError) as info:
        split_options("redis://u:s3cret@h/0?bogus=1&password=p4ss", what="limits", options={})
    assert "s3cret" not in str(info.value)
    assert "p4ss" not in str(info.value)


def test_credentials_are_percent_decoded() -> None:
    assert credentials("redis://us%3Aer:p%40ss%2Fw%3Ard%25@h:1/0") == ("us:er", "p@ss/w:rd%")
    assert credentials("redis://h:1/0") == (None, None)
    assert credentials("redis://:pw@h:1/0") == ("", "pw")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:pw@h/0?password=x&db=1", "redis://:***@h/0?password=***&db=1"),
        ("postgresql://app@[::1]:5432/db", "postgresql://app@[::1]:5432/db"),
        ("host=h user=u password='a b' dbname=d", "host=h user=u password=*** dbname=d"),
        ("redis://h:99999/0", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
