"""DigestSet: the runner's memory of ids and file names at a million jobs."""

from __future__ import annotations

import pytest

from nanobanana_async.batch.digests import DigestSet
from nanobanana_async.batch.journal import JobIds
from nanobanana_async.models import Job


def test_membership_through_growth() -> None:
    names = DigestSet()
    for i in range(5000):
        assert names.add(f"name-{i}")
    assert len(names) == 5000
    assert all(f"name-{i}" in names for i in range(5000))
    assert not any(f"other-{i}" in names for i in range(5000))
    assert not names.add("name-42")
    assert len(names) == 5000
    assert 42 not in names
    assert names.add("\ud83e")  # a lone surrogate is a string like any other


def test_job_ids_number_repeats_and_refuse_duplicates() -> None:
    ids = JobIds()
    first = ids.assign(Job("a fox"))
    assert ids.assign(Job("a fox")) == f"{first}-2"
    assert ids.assign(Job("a fox")) == f"{first}-3"
    assert ids.assign(Job("an owl", id="owl")) == "owl"
    with pytest.raises(ValueError, match="duplicate job id"):
        ids.assign(Job("another owl", id="owl"))
