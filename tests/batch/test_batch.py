"""The batch runner against the emulator: concurrency, exactly-once results, credits, budget,
stop conditions, input handling, downloads, the retry budget and the shared 429 cool-down.

Every test runs on asyncio and Trio. Assertions compare counts read from the emulator (its
ledger, request counters, in-flight gauge) with what the batch reports, never timings.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import httpx
import pytest

from nanobanana_async import (
    AsyncNanoBanana,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    Job,
    JobResult,
    RetryPolicy,
    ServerError,
)
from nanobanana_async.batch import BatchOptions, BatchReport
from nanobanana_async.emulator import Emulator, Faults, serve
from tests.support.clients import FAST, emulated
from tests.support.pulls import Pulls, prompts

pytestmark = pytest.mark.anyio

KEY = "nb-batch-0123456789abcdefXYZ"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHEAP = "gemini-2.5-flash-image"  # 2 credits per image
PRO_4K = "gemini-3-pro-image-preview-4k"  # 16 credits per image


def mixed_jobs(n: int) -> list[Job]:
    """Jobs of different prices (2, 16 and 2x2 credits) so the credit sums mean something."""
    jobs = []
    for i in range(n):
        if i % 3 == 0:
            jobs.append(Job(f"mixed {i}", model=CHEAP))
        elif i % 3 == 1:
            jobs.append(Job(f"mixed {i}", model=PRO_4K, image_size="16:9"))
        else:
            jobs.append(Job(f"mixed {i}", model=CHEAP, num=2))
    return jobs


async def collect(client: AsyncNanoBanana, jobs: Any, **options: Any) -> BatchReport:
    """Iterate ``client.batch`` (not run_batch) and build the report from what was yielded."""
    results: list[JobResult] = []
    async with client.batch(jobs, **options) as run:
        async for result in run:
            results.append(result)
    return run.report(results)


def assert_each_index_once(results: Any, n: int) -> None:
    indices = [r.index for r in results]
    assert len(indices) == n
    assert sorted(indices) == list(range(n))


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4, 32])
async def test_in_flight_never_exceeds_concurrency_and_reaches_it(
    anyio_backend: str, concurrency: int
) -> None:
    # Latency long enough that the first wave is all in flight before any answer, even on a
    # loaded machine (at 20 ms, 32 requests' client and server CPU did not always fit).
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.15, 0.2)), seed=1)
    n = 3 * concurrency + 5
    async with emulated(emulator, KEY) as client:
        report = await collect(
            client, [f"c{concurrency} {i}" for i in range(n)], concurrency=concurrency
        )
    print(
        f"\n[{anyio_backend}] concurrency={concurrency}: "
        f"max in flight {emulator.stats.max_in_flight}"
    )
    assert emulator.stats.max_in_flight == concurrency
    assert emulator.stats.in_flight == 0
    assert report.succeeded == n
    assert emulator.stats.generate_requests == n


async def test_jobs_are_pulled_as_workers_free_up_not_up_front(anyio_backend: str) -> None:
    # A thousand jobs at concurrency 4: when the first result arrives, only a handful have
    # been taken from the input, and the event loop holds a handful of tasks, not a thousand.
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.01, 0.03)), seed=2)
    pulls = Pulls()
    tasks_seen: list[int] = []
    pulled_seen: list[int] = []
    async with emulated(emulator, KEY) as client:
        baseline = live_tasks()
        async with client.batch(prompts(1000, pulls), concurrency=4) as run:
            async for result in run:
                tasks_seen.append(live_tasks() - baseline)
                pulled_seen.append(pulls.pulled - result.index)
                if len(tasks_seen) == 20:
                    break
    assert max(tasks_seen) <= 4 + 8
    # Taken from the input beyond the job just yielded: the workers' jobs, the output buffer
    # (one per worker) and the one the producer holds.
    assert max(pulled_seen) <= 2 * 4 + 2
    assert pulls.pulled < 40
    assert emulator.stats.max_in_flight <= 4


def live_tasks() -> int:
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(
                count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
            )

        return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type]
    import asyncio

    return len(asyncio.all_tasks())


# -- exactly once, in order, and the credits add up ----------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
async def test_every_job_is_reported_once_under_faults_and_credits_match_the_ledger(
    anyio_backend: str, ordered: bool
) -> None:
    emulator = Emulator(
        keys={KEY: 10**6},
        faults=Faults(server_error_rate=0.25, latency=(0.0, 0.01)),
        seed=3,
    )
    n = 150
    jobs = mixed_jobs(n)
    before = emulator.balance(KEY)
    async with emulated(emulator, KEY) as client:
        # One retry: at 25% 5xx about 9 of 150 jobs run out of retries (with two, about 2, and
        # none at all in one run out of ten: which job meets which seeded fault depends on
        # the order requests arrive in).
        report = await collect(client, jobs, concurrency=16, ordered=ordered, max_retries=1)
    spent = before - emulator.balance(KEY)
    results = report.results  # sorted by index
    assert_each_index_once(results, n)
    assert all(r.job == jobs[r.index] for r in results)
    assert report.succeeded + report.failed + report.skipped == n
    # Faults really happened, some were retried and some jobs ran out of retries.
    assert emulator.stats.faults["server_error_json"] + emulator.stats.faults["server_error_html"]
    assert report.retries > 0
    assert report.failed > 0
    assert report.skipped == 0
    assert all(isinstance(r.error, ServerError) for r in results if r.status == "failed")
    # What the report says was spent is what the ledger lost, job by job.
    assert report.credits_spent == sum(r.credits for r in results) == spent
    assert spent == emulator.stats.credits_charged
    assert all(r.credits == (r.generation.credits if r.generation else 0) for r in results)
    assert all(r.credits == 0 for r in results if not r.ok)
    assert emulator.stats.generate_requests == sum(r.attempts for r in results)
    assert report.retries == sum(r.attempts - 1 for r in results)


async def test_ordered_results_come_in_input_order(anyio_backend: str) -> None:
    # Latencies spread wide so completion order differs from input order.
    emulator = Emulator(
        keys={KEY: 10**6},
        faults=Faults(server_error_rate=0.25, latency=(0.0, 0.03)),
        seed=4,
    )
    n = 80
    async with emulated(emulator, KEY) as client:
        ordered: list[int] = []
        async for result in client.batch([f"o{i}" for i in range(n)], concurrency=8, ordered=True):
            ordered.append(result.index)
        unordered: list[int] = []
        async for result in client.batch([f"u{i}" for i in range(n)], concurrency=8):
            unordered.append(result.index)
    assert ordered == list(range(n))
    assert sorted(unordered) == list(range(n))
    assert unordered != list(range(n))  # the emulator's latency did reorder completions


# -- budget -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixed", [False, True])
async def test_the_budget_holds_at_concurrency_32(anyio_backend: str, mixed: bool) -> None:
    emulator = Emulator(
        keys={KEY: 10**6},
        faults=Faults(server_error_rate=0.25, latency=(0.0, 0.01)),
        seed=5,
    )
    n = 200
    jobs: list[Job] = mixed_jobs(n) if mixed else [Job(f"b{i}", model=CHEAP) for i in range(n)]
    max_credits = 101
    before = emulator.balance(KEY)
    async with emulated(emulator, KEY) as client:
        # No retries: a quarter of the jobs fail and must hand their reservation back.
        report = await client.run_batch(
            jobs, concurrency=32, max_credits=max_credits, max_retries=0
        )
    spent = before - emulator.balance(KEY)
    assert spent <= max_credits
    assert report.credits_spent == spent == sum(r.credits for r in report.results)
    assert_each_index_once(report.results, n)
    assert report.succeeded + report.failed + report.skipped == n
    assert report.succeeded > 0
    assert report.failed > 0
    assert report.skipped > 0  # the budget cut the batch mid-way
    skipped = [r for r in report.results if r.status == "skipped"]
    assert all(r.reason is not None and "over budget" in r.reason for r in skipped)
    assert all(r.attempts == 0 and r.credits == 0 for r in skipped)
    # Skipped jobs were never sent.
    assert emulator.stats.generate_requests == sum(r.attempts for r in report.results)
    if not mixed:
        # Failures release their reservation, so the budget is used up to its last whole job.
        assert spent == 100
        assert report.succeeded == 50


# -- conditions that stop the batch -------------------------------------------------------------


async def test_insufficient_credits_stops_dispatch(anyio_backend: str) -> None:
    concurrency = 4
    emulator = Emulator(keys={KEY: 21}, faults=Faults(latency=(0.0, 0.01)), seed=6)
    n = 60
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(
            [Job(f"s{i}", model=CHEAP) for i in range(n)], concurrency=concurrency
        )
    assert report.stopped_reason is not None
    assert "insufficient credits" in report.stopped_reason
    assert report.succeeded == 10
    assert emulator.balance(KEY) == 1
    failed = [r for r in report.results if r.status == "failed"]
    skipped = [r for r in report.results if r.status == "skipped"]
    # Only the requests already in flight when the first refusal came back were refused too.
    assert 1 <= len(failed) <= concurrency
    assert all(isinstance(r.error, InsufficientCreditsError) for r in failed)
    assert len(skipped) == n - 10 - len(failed)
    assert all(
        r.reason is not None and r.reason.startswith("batch stopped") and "insufficient" in r.reason
        for r in skipped
    )
    assert all(r.attempts == 0 for r in skipped)
    assert emulator.stats.by_status.get(400, 0) == len(failed)
    assert emulator.stats.generate_requests == 10 + len(failed)
    assert report.succeeded + report.failed + report.skipped == n


async def test_a_rejected_key_stops_dispatch(anyio_backend: str) -> None:
    concurrency = 4
    emulator = Emulator(keys={KEY: 1000}, faults=Faults(latency=(0.0, 0.01)), seed=7)
    wrong = "nb-wrong-0123456789abcdefQQQ"
    n = 40
    async with emulated(emulator, wrong) as client:
        report = await client.run_batch([f"k{i}" for i in range(n)], concurrency=concurrency)
    assert report.stopped_reason is not None
    assert "API key" in report.stopped_reason
    assert wrong not in report.stopped_reason
    failed = [r for r in report.results if r.status == "failed"]
    assert 1 <= len(failed) <= concurrency
    assert all(isinstance(r.error, AuthenticationError) and r.attempts == 1 for r in failed)
    assert report.skipped == n - len(failed)
    assert all(
        r.reason is not None and "API key" in r.reason and wrong not in r.reason
        for r in report.results
        if r.status == "skipped"
    )
    assert emulator.stats.generate_requests == emulator.stats.by_status[401] == len(failed)
    assert emulator.balance(KEY) == 1000


# -- input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"concurrency": -3},
        {"concurrency": True},
        {"concurrency": 2.5},
        {"max_credits": -1},
        {"max_credits": 1.5},
        {"max_per_second": 0},
        {"max_per_second": -1.0},
        {"max_per_second": float("nan")},
        {"max_per_second": float("inf")},
    ],
)
async def test_bad_options_are_refused_before_anything_is_sent(
    anyio_backend: str, options: dict[str, Any]
) -> None:
    (name,) = options
    with pytest.raises(InvalidRequestError) as info:
        BatchOptions(**options)
    assert info.value.param == name
    emulator = Emulator(keys={KEY: 100})
    async with emulated(emulator, KEY) as client:
        with pytest.raises(InvalidRequestError):
            client.batch(["x"], **options)
        with pytest.raises(InvalidRequestError):
            await client.run_batch(["x"], **options)
    assert emulator.stats.requests == 0


async def test_a_single_string_is_not_a_batch(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 100})
    async with emulated(emulator, KEY) as client:
        with pytest.raises(InvalidRequestError, match="wrap it in a list"):
            client.batch("one prompt")
        with pytest.raises(InvalidRequestError):
            client.batch(42)  # type: ignore[arg-type]
    assert emulator.stats.requests == 0


async def test_invalid_jobs_fail_alone_and_are_never_sent(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 1000}, seed=8)
    inputs: list[Any] = [
        "fine",
        "",
        42,
        Job("a job", model=PRO_4K),
        "   ",
        None,
        Job("first with this id", id="dup"),
        Job("second with this id", id="dup"),
        "also fine",
    ]
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(inputs, concurrency=3, journal=tmp_path / "j.jsonl")
    status = [r.status for r in report.results]
    assert status == [
        "succeeded",
        "failed",
        "failed",
        "succeeded",
        "failed",
        "failed",
        "succeeded",
        "failed",
        "succeeded",
    ]
    for r in report.results:
        if r.status == "failed":
            assert isinstance(r.error, InvalidRequestError)
            assert r.attempts == 0
            assert r.credits == 0
    assert "duplicate job id" in str(report.results[7].error)
    assert emulator.stats.generate_requests == 4
    assert report.credits_spent == 2 + 16 + 2 + 2 == emulator.stats.credits_charged


@attrs.define
class Countdown:
    """An async iterable that is not an async generator (no aclose)."""

    items: list[Job | str]

    def __aiter__(self) -> Countdown:
        return self

    async def __anext__(self) -> Job | str:
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)


async def test_plain_and_async_iterables_of_str_and_job_mixed(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=9)
    mixed: list[Job | str] = ["a", Job("b", model=PRO_4K), "c", Job("d", num=3, id="d")]
    closed: list[bool] = []

    async def agen() -> AsyncIterator[Job | str]:
        try:
            for item in mixed:
                yield item
        finally:
            closed.append(True)

    async with emulated(emulator, KEY) as client:
        reports = [
            await client.run_batch(mixed, ordered=True),
            await client.run_batch(iter(mixed)),
            await client.run_batch(tuple(mixed)),
            await client.run_batch(x for x in mixed),
            await client.run_batch(agen()),
            await client.run_batch(Countdown(list(mixed))),
        ]
    for report in reports:
        assert report.succeeded == 4
        prompts_ = [r.job.prompt for r in report.results if r.job is not None]
        assert prompts_ == ["a", "b", "c", "d"]
        assert report.results[3].generation is not None
        assert len(report.results[3].generation.urls) == 3
        assert report.credits_spent == 2 + 16 + 2 + 6
    assert closed == [True]
    assert emulator.stats.generate_requests == 4 * len(reports)


# -- downloads -----------------------------------------------------------------------------------


def check_downloads(report: BatchReport, out: pathlib.Path, images: int) -> None:
    assert report.ok
    paths = [p for r in report.results for p in r.paths]
    assert len(paths) == images
    assert len(set(paths)) == images
    for result in report.results:
        assert result.generation is not None
        assert len(result.paths) == len(result.generation.urls)
    for path in paths:
        assert path.parent.resolve() == out.resolve()
        assert path.suffix == ".png"
        assert "/" not in path.name
        assert not path.name.startswith(".")
        assert path.read_bytes().startswith(PNG_MAGIC)
    # Nothing but the images: no temp file left, nothing outside the directory.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)


DOWNLOAD_JOBS: list[Job | str] = [
    Job("a red kite", id="kite"),
    Job("two blue kites", num=2, id="kites"),
    Job("a tall one", image_size="9:16", id="../../escape"),
    Job("no id given"),
    "a plain string",
]


async def test_downloads_land_in_the_directory(anyio_backend: str, tmp_path: pathlib.Path) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=10)
    out = tmp_path / "out" / "nested"
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(DOWNLOAD_JOBS, concurrency=3, download_dir=out)
    check_downloads(report, out, images=6)
    assert [p.name for p in report.results[1].paths] == ["kites+1.png", "kites+2.png"]
    assert emulator.stats.images_served == 6
    assert not (tmp_path / "escape.png").exists()


async def test_downloads_over_a_loopback_socket(anyio_backend: str, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("uvicorn")
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.0, 0.02)), seed=11)
    out = tmp_path / "images"
    with serve(emulator, "127.0.0.1", 0) as server:
        async with AsyncNanoBanana(KEY, base_url=server.base_url, retry_policy=FAST) as client:
            report = await client.run_batch(DOWNLOAD_JOBS, concurrency=4, download_dir=out)
    check_downloads(report, out, images=6)
    assert emulator.stats.images_served == 6
    assert emulator.stats.image_requests_with_authorization == 6  # same origin as the API


# -- the retry budget ----------------------------------------------------------------------------


async def test_a_dead_server_is_not_hammered_with_retries(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(server_error_rate=1.0), seed=12)
    n, max_retries = 200, 3
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(
            [f"dead {i}" for i in range(n)], concurrency=8, max_retries=max_retries
        )
        denied = client.retry_budget.retries_denied
    print(f"\n[{anyio_backend}] 100% 5xx: {report.retries} retries for {n} jobs, {denied} denied")
    assert report.failed == n
    assert emulator.stats.generate_requests == n + report.retries
    # Without the budget: n * max_retries = 600 retries. The budget lets about 50 through.
    assert report.retries < 0.2 * n * max_retries
    assert denied > 0
    assert emulator.stats.credits_charged == 0


async def test_a_flaky_server_is_still_retried(anyio_backend: str) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(server_error_rate=0.25), seed=13)
    n, max_retries = 200, 3
    async with emulated(emulator, KEY) as client:
        report = await client.run_batch(
            [f"flaky {i}" for i in range(n)], concurrency=8, max_retries=max_retries
        )
        denied = client.retry_budget.retries_denied
    print(
        f"\n[{anyio_backend}] 25% 5xx: {report.retries} retries for {n} jobs, "
        f"{report.failed} failed"
    )
    assert emulator.stats.generate_requests == n + report.retries
    # About a third of n expected (0.25 + 0.25^2 + ...); the budget never refused one.
    assert report.retries > 0.15 * n
    assert denied == 0
    assert report.failed < 0.05 * n


# -- 429: a cool-down shared by the whole batch --------------------------------------------------


class Recording(httpx.AsyncBaseTransport):
    """Wraps a transport; records when each generate request starts and each 429 arrives."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.starts: list[float] = []
        self.limited: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.starts.append(time.monotonic())
        response = await self.inner.handle_async_request(request)
        if response.status_code == 429:
            self.limited.append(time.monotonic())
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_429_pauses_the_whole_batch(anyio_backend: str) -> None:
    retry_after = 0.3
    emulator = Emulator(
        keys={KEY: 10**6},
        faults=Faults(rate_limit_rate=0.03, retry_after=retry_after, latency=0.01),
        seed=14,
    )
    recording = Recording(emulator.transport())
    # Without pauses the batch takes ~0.15 s (120 jobs, 8 at a time, 10 ms each): each
    # Retry-After window would be full of other jobs' requests.
    n = 120
    async with AsyncNanoBanana(
        KEY, base_url="https://api.test", transport=recording, retry_policy=FAST
    ) as client:
        report = await client.run_batch(
            [f"limited {i}" for i in range(n)], concurrency=8, max_retries=6
        )
    assert report.succeeded == n
    assert recording.limited, "no 429 was drawn: the test would prove nothing"
    assert emulator.stats.faults["rate_limited"] == len(recording.limited)
    # After each 429, no request of any job starts for Retry-After (small slack each side for
    # requests already past the gate and for the clock's resolution).
    in_pause = [
        start
        for limited in recording.limited
        for start in recording.starts
        if limited + 0.02 < start < limited + retry_after - 0.02
    ]
    gaps = [
        min((s - limited for s in recording.starts if s > limited), default=float("inf"))
        for limited in recording.limited
    ]
    print(
        f"\n[{anyio_backend}] 429: {len(recording.limited)} cool-downs, first start after each "
        f"{[round(g, 3) for g in gaps]}"
    )
    assert in_pause == []
    # Without the shared pause the other 7 workers would have kept going at ~5 ms a request.
    assert len(recording.starts) == n + report.retries


async def test_an_input_that_raises_ends_the_batch_with_its_error(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.0, 0.02)), seed=15)
    journal = tmp_path / "run.jsonl"

    def broken() -> Iterator[str]:
        for i in range(20):
            yield f"before the break {i}"
        raise LookupError("the input broke")

    results: list[JobResult] = []

    async def drain(client: AsyncNanoBanana) -> None:
        async for result in client.batch(broken(), concurrency=8, journal=journal):
            results.append(result)

    async with emulated(emulator, KEY) as client:
        with pytest.raises(LookupError, match="the input broke"):
            await drain(client)
        assert (await client.run_batch([])).total == 0
    # Every job taken before the input failed finished and was reported once, then the error
    # came: nothing paid for went unreported, everything reported is in the journal.
    assert sorted(r.index for r in results) == list(range(20))
    assert all(r.ok for r in results)
    lines = journal.read_text().splitlines()
    assert len(lines) == len(results) == emulator.stats.generations
    assert emulator.stats.in_flight == 0


async def test_concurrency_holds_over_a_loopback_socket(anyio_backend: str) -> None:
    pytest.importorskip("uvicorn")
    emulator = Emulator(
        keys={KEY: 10**6}, faults=Faults(server_error_rate=0.25, latency=0.2), seed=16
    )
    with serve(emulator, "127.0.0.1", 0) as server:
        async with AsyncNanoBanana(KEY, base_url=server.base_url, retry_policy=FAST) as client:
            report = await client.run_batch([f"socket {i}" for i in range(96)], concurrency=32)
    print(
        f"\n[{anyio_backend}] loopback concurrency=32: max in flight {emulator.stats.max_in_flight}"
    )
    assert emulator.stats.max_in_flight == 32
    assert report.retries > 0
    assert_each_index_once(report.results, 96)


async def test_jobs_waiting_for_the_rate_limit_do_not_send_after_a_stop(
    anyio_backend: str,
) -> None:
    # 8 workers take a job each, 7 of them wait for the 5/s limiter; the first request comes
    # back 401 after 50 ms, long before the next start is due: none of the 7 may send.
    emulator = Emulator(keys={KEY: 1000}, faults=Faults(latency=0.05), seed=17)
    wrong = "nb-wrong-0123456789abcdefRRR"
    async with emulated(emulator, wrong) as client:
        report = await client.run_batch(
            [f"limited {i}" for i in range(40)], concurrency=8, max_per_second=5
        )
    assert report.stopped_reason is not None
    assert emulator.stats.generate_requests == emulator.stats.by_status[401] == report.failed
    assert report.failed <= 2
    assert report.skipped == 40 - report.failed


async def test_retries_waiting_in_backoff_do_not_send_after_a_stop(anyio_backend: str) -> None:
    # No credits at all and half the requests failing with 5xx: the first wave of 8 is either
    # refused (insufficient credits: stop) or fails and waits 0.3 s to retry. The retries come
    # long after the stop and must not be sent.
    emulator = Emulator(keys={KEY: 0}, faults=Faults(server_error_rate=0.5, latency=0.02), seed=18)
    slow_retry = RetryPolicy(initial_delay=0.3, max_delay=0.3, max_retries=3)
    async with emulated(emulator, KEY, retry_policy=slow_retry) as client:
        report = await client.run_batch([f"broke {i}" for i in range(40)], concurrency=8)
    assert report.stopped_reason is not None
    assert "insufficient credits" in report.stopped_reason
    assert emulator.stats.generate_requests == 8
    refused = emulator.stats.by_status[400]
    assert 1 <= refused < 8  # both kinds were in the first wave
    failed = [r for r in report.results if r.status == "failed"]
    assert len(failed) == 8
    not_retried = [r for r in failed if not isinstance(r.error, InsufficientCreditsError)]
    assert len(not_retried) == 8 - refused
    assert all("batch stopped" in str(r.error) and r.attempts == 1 for r in not_retried)
    assert report.skipped == 32
    assert report.retries == 0
