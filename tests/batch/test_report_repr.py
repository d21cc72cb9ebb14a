"""``repr`` and ``str`` of a big batch report stay short (issue 20, item 4)."""

from __future__ import annotations

import pytest

from nanobanana_async import AsyncNanoBanana, Job, RetryPolicy
from nanobanana_async.emulator import Emulator, Faults

pytestmark = pytest.mark.anyio

JOBS = 5_000


async def test_a_5000_job_report_prints_short_and_keeps_every_result(anyio_backend: str) -> None:
    emulator = Emulator(faults=Faults(server_error_rate=0.01), seed=4)
    jobs = [Job(f"a long prompt about a lighthouse, take {i} " * 4) for i in range(JOBS)]
    policy = RetryPolicy(max_retries=0)
    async with AsyncNanoBanana(
        "sk-test", transport=emulator.transport(), retry_policy=policy
    ) as client:
        report = await client.run_batch(jobs, concurrency=64, max_credits=2 * (JOBS - 100))
    assert report.failed > 3
    assert report.skipped > 0
    assert len(report.results) == JOBS  # every result stays in .results

    text, summary = repr(report), str(report)
    assert len(text) < 1_500, len(text)
    assert len(summary) < 1_500, len(summary)
    for shown in (text, summary):
        assert f"{JOBS} jobs" in shown
        assert f"{report.succeeded} succeeded" in shown
        assert f"{report.failed} failed" in shown
        assert f"{report.skipped} skipped" in shown
        assert f"{report.credits_spent} spent" in shown
        assert "lighthouse" not in shown  # no job is printed whole
    failures = report.failures()
    assert len(failures) == report.failed + report.skipped
    assert [r.index for r in failures] == sorted(r.index for r in failures)
    first = failures[0]
    assert f"#{first.index + 1} " in text
    assert "ServerError" in text
    assert f"{len(failures) - 3} more" in text
    assert summary.count("\n  #") == 3
    assert report.failures(2) == failures[:2]


async def test_a_report_without_failures_says_so_briefly(anyio_backend: str) -> None:
    async with AsyncNanoBanana("sk-test", transport=Emulator().transport()) as client:
        report = await client.run_batch(["a", "b"])
    assert repr(report).startswith("<BatchReport 2 jobs: 2 succeeded, 0 failed, 0 skipped;")
    assert "failures" not in repr(report)
    assert report.failures() == []
    assert str(report).splitlines()[1] == "credits: 4 spent, 4 estimated, 0 may have been spent"
