"""Fixtures of the client tests."""

from __future__ import annotations

import pytest
import respx


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(using=None, assert_all_mocked=True, assert_all_called=False)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("NANOBANANA_API_KEY", raising=False)
    monkeypatch.delenv("NANOBANANA_BASE_URL", raising=False)
    return monkeypatch
