"""Event hooks (``hooks=``): what they receive, and that a failing hook changes nothing."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nanobanana_async import (
    AsyncNanoBanana,
    AttemptEvent,
    BatchReport,
    Hooks,
    InvalidRequestError,
    JobResult,
    ResponseEvent,
    RetryEvent,
)
from nanobanana_async.emulator import Emulator, Faults

from .support import FAST, KEY, Otel

pytestmark = pytest.mark.anyio

FAULTS = Faults(server_error_rate=0.25, rate_limit_rate=0.1, retry_after=0.01, drop_rate=0.1)


async def test_hooks_receive_every_event_sync_or_async() -> None:
    emulator = Emulator(keys={KEY: 10_000}, faults=FAULTS, seed=3)
    events: list[Any] = []

    async def async_append(event: object) -> None:
        events.append(event)

    hooks = Hooks(
        before_attempt=events.append,
        after_response=async_append,
        on_retry=events.append,
        on_job_result=async_append,
    )
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), retry_policy=FAST, max_retries=3, hooks=hooks
    ) as client:
        report = await client.run_batch([f"prompt {i}" for i in range(12)], concurrency=3)

    results = [e for e in events if isinstance(e, JobResult)]
    assert sorted(r.index for r in results) == list(range(12))
    attempts = [e for e in events if isinstance(e, AttemptEvent)]
    responses = [e for e in events if isinstance(e, ResponseEvent)]
    retries = [e for e in events if isinstance(e, RetryEvent)]
    assert len(attempts) == len(responses) == emulator.stats.generate_requests
    assert len(retries) == report.retries > 0
    assert {r.reason for r in retries} <= {"server_error", "rate_limited"}
    assert all(r.attempt >= 2 and r.waited >= 0 and r.error is not None for r in retries)
    for response in responses:
        if response.outcome == "success":
            assert response.status_code == 200
            assert response.error is None
            assert response.headers is not None
            assert response.headers["content-type"] == "application/json"
        elif response.outcome == "connection_lost":
            assert response.status_code is None
            assert response.may_have_been_charged
        else:
            assert response.status_code in (429, 500, 502, 503)
            assert not response.may_have_been_charged
    # One idempotency key per call, on every attempt of it.
    keys: dict[str, set[int]] = {}
    for attempt in attempts:
        keys.setdefault(attempt.idempotency_key, set()).add(attempt.attempt)
    assert len(keys) == sum(1 for r in report.results if r.attempts)
    assert all(numbers == set(range(1, len(numbers) + 1)) for numbers in keys.values())


def _failing_hooks(calls: list[str]) -> Hooks:
    def sync_boom(event: object) -> None:
        calls.append(type(event).__name__)
        raise RuntimeError("hook bug")

    async def async_boom(event: object) -> None:
        calls.append(type(event).__name__)
        raise ValueError("async hook bug")

    return Hooks(
        before_attempt=sync_boom,
        after_response=async_boom,
        on_retry=async_boom,
        on_job_result=sync_boom,
    )


async def _run(hooks: Hooks | None, otel: Otel | None) -> tuple[BatchReport, Emulator]:
    emulator = Emulator(keys={KEY: 10_000}, faults=FAULTS, seed=5)
    providers = otel.providers if otel is not None else {}
    async with AsyncNanoBanana(
        KEY,
        transport=emulator.transport(),
        retry_policy=FAST,
        max_retries=3,
        hooks=hooks,
        **providers,
    ) as client:
        # One job at a time: the emulator's faults then meet the same requests in both runs.
        report = await client.run_batch([f"prompt {i}" for i in range(15)], concurrency=1)
    return report, emulator


def _outcomes(report: BatchReport) -> list[tuple[Any, ...]]:
    return [
        (
            r.index,
            r.status,
            r.attempts,
            r.credits,
            r.credits_may_have_been_spent,
            r.generation.urls if r.generation else None,
            str(r.error) if r.error else None,
        )
        for r in report.results
    ]


async def test_a_failing_hook_changes_nothing(otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    plain, plain_emulator = await _run(None, None)
    calls: list[str] = []
    with caplog.at_level(logging.WARNING, logger="nanobanana_async"):
        hooked, hooked_emulator = await _run(_failing_hooks(calls), otel)
    assert _outcomes(hooked) == _outcomes(plain)
    assert hooked.retries == plain.retries > 0
    # Times and Idempotency-Keys (uuids) differ between any two runs.
    random = {
        "request_start_times": None,
        "charged_idempotency_keys": None,
        "credits_by_idempotency_key": None,
        "generate_records": None,
    }
    assert hooked_emulator.stats.to_dict() | random == plain_emulator.stats.to_dict() | random
    assert set(calls) == {"AttemptEvent", "ResponseEvent", "RetryEvent", "JobResult"}
    logged = [r for r in caplog.records if "hook raised" in r.getMessage()]
    assert len(logged) == len(calls)
    assert {r.exc_info[0] for r in logged if r.exc_info} == {RuntimeError, ValueError}
    # Spans and metrics are unaffected too.
    assert otel.total("nanobanana.client.requests") == hooked_emulator.stats.generate_requests
    assert otel.total("nanobanana.client.retries") == hooked.retries


async def test_generate_with_a_failing_hook_returns_its_generation() -> None:
    emulator = Emulator(keys={KEY: 100})
    async with AsyncNanoBanana(
        KEY, transport=emulator.transport(), hooks=_failing_hooks([])
    ) as client:
        generation = await client.generate("a red fox")
    assert len(generation.urls) == 1


def test_hooks_are_checked_when_made() -> None:
    with pytest.raises(TypeError):
        Hooks(before_attempt="print")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="hooks must be"):
        AsyncNanoBanana(KEY, hooks=print)  # type: ignore[arg-type]
