"""The money path of a batch: issue 11's findings, one test each (``f<N>`` is the finding).

A scripted server (an httpx ``MockTransport`` handler) charges a ledger exactly where the
real API would, then answers the way the finding needs: a cut success body, a dropped
connection, a 5xx around a success, unfetchable image URLs. Each test asserts what the
ledger and the journal say, on asyncio and Trio.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import httpx
import pytest

from nanobanana_async import AsyncNanoBanana, InvalidRequestError, Job, NanoBananaError
from nanobanana_async.emulator import Emulator, Faults
from tests.support.clients import FAST, emulated
from tests.support.pulls import Pulls, prompts

pytestmark = pytest.mark.anyio

KEY = "nb-money-0123456789abcdefMNOP"
BASE = "https://api.money.test"
CDN = "https://cdn.money.test"
PRICE = 2  # gemini-2.5-flash-image, the default model
PNG = b"\x89PNG\r\n\x1a\n" + b"money" * 50

Answer = Callable[[dict[str, Any], int], httpx.Response]


def success(*urls: str, status: int = 200) -> httpx.Response:
    url: str | list[str] = urls[0] if len(urls) == 1 else list(urls)
    # ASCII escapes, as a server sends text UTF-8 cannot carry (lone surrogates).
    payload = json.dumps({"code": 0, "message": "ok", "data": {"url": url}})
    return httpx.Response(status, content=payload.encode())


@attrs.define
class Scripted:
    """A server that charges ``PRICE`` per image for every generate request it accepts and
    answers with ``answer(body, attempt)``; ``attempt`` counts requests per prompt from 1."""

    answer: Answer
    charge: bool = True
    ledger: int = 0
    requests: int = 0
    attempts: dict[str, int] = attrs.Factory(dict)
    images: dict[str, bytes] = attrs.Factory(dict)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/img/"):
            if request.url.path in self.images:
                return httpx.Response(200, content=self.images[request.url.path])
            await anyio.sleep(3600)  # an image host that never answers
        body = json.loads(request.content)
        self.requests += 1
        attempt = self.attempts[body["prompt"]] = self.attempts.get(body["prompt"], 0) + 1
        if self.charge:
            self.ledger += PRICE * body["num"]
        return self.answer(body, attempt)

    def client(self, **kwargs: Any) -> AsyncNanoBanana:
        kwargs.setdefault("retry_policy", FAST)
        return AsyncNanoBanana(KEY, base_url=BASE, transport=httpx.MockTransport(self), **kwargs)


def named(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


def lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# -- budget and double payment ----------------------------------------------------------------


async def test_f01_a_success_with_an_unreadable_body_keeps_its_reservation() -> None:
    # Charged, then answered 200 with a body cut mid-way: the server may well have charged.
    server = Scripted(lambda body, attempt: httpx.Response(200, content=b'{"code":0,"mess'))
    async with server.client() as client:
        report = await client.run_batch(named("cut", 10), max_credits=6, concurrency=4)
    assert server.ledger <= 6, f"charged {server.ledger} for a budget of 6"
    assert report.credits_spent == 0
    assert report.credits_may_have_been_spent == server.ledger
    failed = [r for r in report.results if r.status == "failed"]
    assert failed
    assert all(r.may_have_been_charged for r in failed)
    assert {r.status for r in report.results} == {"failed", "skipped"}


async def test_f02_each_ambiguous_attempt_holds_its_own_reservation() -> None:
    # Every attempt is charged and then its connection drops; retry_ambiguous retries them.
    def drop(body: dict[str, Any], attempt: int) -> httpx.Response:
        raise httpx.ReadError("connection reset after the request was sent")

    server = Scripted(drop)
    async with server.client(retry_ambiguous=True, max_retries=3) as client:
        report = await client.run_batch(named("retry", 5), max_credits=10, concurrency=5)
    assert server.ledger <= 10, f"charged {server.ledger} for a budget of 10"
    assert report.credits_may_have_been_spent == server.ledger
    assert sum(r.credits_may_have_been_spent for r in report.results) == server.ledger
    # Some jobs retried as far as the budget let them, and said why they stopped.
    assert any("no room for another attempt" in str(r.error) for r in report.results)


async def test_f03_a_batch_stopped_during_downloads_is_downloaded_not_paid_again(
    tmp_path: pathlib.Path,
) -> None:
    def images(body: dict[str, Any], attempt: int) -> httpx.Response:
        return success(f"{CDN}/img/{body['prompt'].replace(' ', '_')}.png")

    server = Scripted(images)  # its image host hangs: the downloads never finish
    journal, out = tmp_path / "run.jsonl", tmp_path / "out"
    jobs = named("slow image", 8)
    async with server.client() as client:
        with anyio.move_on_after(0.5):
            async for _ in client.batch(jobs, concurrency=8, journal=journal, download_dir=out):
                pass
    assert server.requests == 8
    # Each job is journaled generated, then failed with its URLs: the download was cancelled.
    records = lines(journal)
    assert [r["status"] for r in records].count("generated") == 8
    assert {r["status"] for r in records} <= {"generated", "failed"}
    assert all(r["urls"] for r in records)
    cancelled = [r for r in records if r["status"] == "failed"]
    assert len(cancelled) == 8
    assert all("download was cancelled" in r["error"] for r in cancelled)

    server.images = {f"/img/{p.replace(' ', '_')}.png": PNG for p in jobs}
    async with server.client() as client:
        report = await client.run_batch(jobs, journal=journal, download_dir=out)
    assert server.requests == 8, "a job paid for in the first run was generated again"
    assert report.succeeded == 8
    assert report.resumed == 8
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{r.id}.png" for r in report.results)


async def test_f04_an_abandoned_iterator_costs_at_most_the_jobs_in_flight() -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.02, 0.1)), seed=4)
    pulls = Pulls()
    async with emulated(emulator, KEY, base_url=BASE) as client:
        run = client.batch(prompts(200, pulls), concurrency=8)
        async for _ in run:
            break  # ``run`` stays referenced: nothing but the consumer's pulls may dispatch
        await anyio.sleep(0.5)
        requests = emulator.stats.generate_requests
        await anyio.sleep(0.3)
        assert emulator.stats.generate_requests == requests
        # One result taken, at most ``concurrency`` dispatched besides it.
        assert requests <= 1 + 8
        assert pulls.pulled <= 1 + 8
        await run.aclose()


async def test_f04_the_async_with_form_ends_a_named_run() -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=0.05), seed=4)
    async with emulated(emulator, KEY, base_url=BASE) as client:
        async with client.batch(named("named", 100), concurrency=4) as run:
            async for _ in run:
                break
        requests = emulator.stats.generate_requests
        await anyio.sleep(0.2)
    assert emulator.stats.generate_requests == requests <= 1 + 4
    assert emulator.stats.in_flight == 0


async def test_f05_a_journal_is_held_by_one_run_at_a_time(tmp_path: pathlib.Path) -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=0.05), seed=5)
    journal = tmp_path / "shared.jsonl"
    async with emulated(emulator, KEY, base_url=BASE) as client:
        async with client.batch(named("held", 20), journal=journal, concurrency=2) as first:
            await first.__anext__()  # started, and busy for a while: it holds the journal
            with pytest.raises(InvalidRequestError, match="in use by another run") as info:
                await client.run_batch(named("held", 20), journal=journal)
            assert str(journal) in str(info.value)
            async for _ in first:
                pass
        # Released when the first run ends.
        again = await client.run_batch(named("held", 20), journal=journal)
    assert again.resumed == 20
    assert emulator.stats.generate_requests == 20


async def test_f05_a_journal_held_by_another_process_is_refused(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "shared.jsonl"
    script = (
        "import sys, time; from nanobanana_async.batch.journal import Journal; "
        "j = Journal(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    )
    async with await anyio.open_process(
        [sys.executable, "-c", script, str(journal)],
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[2])},
    ) as holder:
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.receive()).strip() == b"held"
            emulator = Emulator(keys={KEY: 10**6})
            async with emulated(emulator, KEY, base_url=BASE) as client:
                with pytest.raises(InvalidRequestError, match="in use by another run"):
                    await client.run_batch(named("other process", 3), journal=journal)
            assert emulator.stats.generate_requests == 0
        finally:
            holder.kill()


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_f06_a_5xx_around_a_success_body_is_paid_once(status: int) -> None:
    server = Scripted(lambda body, attempt: success(f"{CDN}/{body['prompt']}.png", status=status))
    async with server.client() as client:
        report = await client.run_batch(named("5xx ok", 3))
    assert report.succeeded == 3
    assert server.requests == 3
    assert report.credits_spent == server.ledger == 3 * PRICE


# -- lost or wrong results --------------------------------------------------------------------

BAD_URLS = (
    "http://127.0.0.1:99999/img/port.png",
    "http://" + "a" * 64 + ".test/img/label.png",
    "http://\ud83e.test/img/surrogate.png",
    "not a url at all",
)


async def test_f07_an_unfetchable_image_url_fails_that_job_only(tmp_path: pathlib.Path) -> None:
    def answer(body: dict[str, Any], attempt: int) -> httpx.Response:
        if body["prompt"] == "good":
            return success(f"{CDN}/img/good.png")
        return success(BAD_URLS[int(body["prompt"].split()[-1])])

    server = Scripted(answer, images={"/img/good.png": PNG})
    jobs = ["good", *(f"bad {i}" for i in range(len(BAD_URLS)))]
    async with server.client() as client:
        report = await client.run_batch(jobs, download_dir=tmp_path / "out")
    by_prompt = {r.job.prompt: r for r in report.results if r.job}
    assert by_prompt["good"].ok
    for i in range(len(BAD_URLS)):
        result = by_prompt[f"bad {i}"]
        assert result.status == "failed"
        assert isinstance(result.error, NanoBananaError)
        assert "could not be downloaded" in str(result.error)
        assert result.credits == PRICE  # generated and paid: only its file is missing


async def test_f08_lone_surrogates_from_the_server_never_break_the_journal(
    tmp_path: pathlib.Path,
) -> None:
    def answer(body: dict[str, Any], attempt: int) -> httpx.Response:
        if body["prompt"].startswith("error"):
            payload = '{"code": 400, "message": "bad \\ud83e prompt"}'
        else:
            payload = (
                '{"code": 0, "message": "ok \\udfff", "data": {"url": "https://x/\\ud83e.png"}}'
            )
        return httpx.Response(200, content=payload.encode())

    server = Scripted(answer)
    journal = tmp_path / "odd.jsonl"
    async with server.client() as client:
        report = await client.run_batch(["error 1", "ok 1", "ok 2"], journal=journal)
        assert report.failed == 1
        assert report.succeeded == 2
        again = await client.run_batch(["error 1", "ok 1", "ok 2"], journal=journal)
    assert again.resumed == 2
    assert server.requests == 4  # the failed job again, nothing else
    records = lines(journal)
    assert any("\ud83e" in json.dumps(r["urls"], ensure_ascii=False) for r in records)


async def test_f11_closing_the_client_under_run_batch_raises() -> None:
    emulator = Emulator(keys={KEY: 10**6}, faults=Faults(latency=(0.05, 0.2)), seed=11)
    outcome: list[BaseException | int] = []
    async with emulated(emulator, KEY, base_url=BASE) as client:

        async def run() -> None:
            try:
                report = await client.run_batch(named("closed", 20), concurrency=4)
            except NanoBananaError as exc:
                outcome.append(exc)
            else:
                outcome.append(report.total)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while emulator.stats.generations < 6:  # noqa: ASYNC110 - the emulator's counter
                await anyio.sleep(0.01)
            await client.aclose()
    (result,) = outcome
    assert isinstance(result, NanoBananaError), f"run_batch returned {result} results"
    assert "closed" in str(result)


async def test_f12_extra_images_never_take_another_jobs_name(tmp_path: pathlib.Path) -> None:
    def answer(body: dict[str, Any], attempt: int) -> httpx.Response:
        if body["prompt"] == "fox":
            return success(f"{CDN}/img/fox-a.png", f"{CDN}/img/fox-b.png")  # 2 for num=1
        return success(f"{CDN}/img/other.png")

    images = {"/img/fox-a.png": b"A" * 10, "/img/fox-b.png": b"B" * 10, "/img/other.png": b"O"}
    server = Scripted(answer, images=images)
    out = tmp_path / "out"
    async with server.client() as client:
        report = await client.run_batch(
            [Job("fox", id="fox"), Job("fox one", id="fox-1"), Job("fox two", id="fox-2")],
            download_dir=out,
        )
    assert report.succeeded == 3
    names = {p.name: p.read_bytes() for p in out.iterdir()}
    assert names == {
        "fox.png": b"A" * 10,
        "fox+2.png": b"B" * 10,
        "fox-1.png": b"O",
        "fox-2.png": b"O",
    }
    (fox,) = [r for r in report.results if r.id == "fox"]
    assert fox.generation is not None
    assert fox.generation.extra_images == 1
    assert fox.credits == PRICE  # charged as asked


async def test_f16_resuming_into_a_new_download_dir_downloads_there(
    tmp_path: pathlib.Path,
) -> None:
    emulator = Emulator(keys={KEY: 10**6}, seed=16)
    journal = tmp_path / "run.jsonl"
    async with emulated(emulator, KEY, base_url=BASE) as client:
        await client.run_batch(named("move", 3), journal=journal, download_dir=tmp_path / "a")
        report = await client.run_batch(
            named("move", 3), journal=journal, download_dir=tmp_path / "b"
        )
    assert report.resumed == 3
    assert emulator.stats.generate_requests == 3
    assert len(list((tmp_path / "b").iterdir())) == 3
    assert all(p.parent == tmp_path / "b" for r in report.results for p in r.paths)


async def test_f16_a_download_dir_that_is_a_file_is_an_invalid_request(
    tmp_path: pathlib.Path,
) -> None:
    target = tmp_path / "file.png"
    target.write_bytes(b"x")
    emulator = Emulator(keys={KEY: 10**6})
    async with emulated(emulator, KEY, base_url=BASE) as client:
        with pytest.raises(InvalidRequestError) as info:
            await client.run_batch(["x"], download_dir=target)
    assert info.value.param == "download_dir"
    assert emulator.stats.generate_requests == 0


async def test_f16_a_deeply_nested_journal_line_is_skipped(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "deep.jsonl"
    journal.write_bytes(b"[" * 200_000 + b"]" * 200_000 + b"\n")
    emulator = Emulator(keys={KEY: 10**6})
    async with emulated(emulator, KEY, base_url=BASE) as client:
        report = await client.run_batch(["after the deep line"], journal=journal)
    assert report.succeeded == 1


async def test_f17_one_job_at_a_huge_concurrency_starts_one_worker() -> None:
    emulator = Emulator(keys={KEY: 10**6})
    async with emulated(emulator, KEY, base_url=BASE) as client:
        await client.run_batch(["warm up"], concurrency=1)
        tracemalloc.start()
        try:
            report = await client.run_batch(["alone"], concurrency=100_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert report.succeeded == 1
    # 100,000 idle workers took 800 MiB; one job needs a few hundred KiB at most.
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"


async def test_f19_fewer_images_than_asked_are_charged_and_reported_as_partial() -> None:
    def answer(body: dict[str, Any], attempt: int) -> httpx.Response:
        return success(f"{CDN}/{body['prompt']}-1.png")  # one URL, whatever num says

    server = Scripted(answer, charge=False)
    async with server.client() as client:
        report = await client.run_batch([Job("three", num=3), Job("one", num=1)])
    three, one = report.results
    assert three.partial
    assert three.generation is not None
    assert three.generation.partial
    assert three.credits == PRICE * 1
    assert not one.partial
    assert report.partial == 1
    assert report.credits_spent == PRICE * 2
