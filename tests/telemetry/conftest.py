"""Fixtures of the telemetry tests: fresh SDK providers per test, never the global ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import Otel


@pytest.fixture
def otel() -> Iterator[Otel]:
    telemetry = Otel()
    yield telemetry
    telemetry.shutdown()
