"""Files: download names never escape the output directory, and a failed or cancelled
download never leaves a partial file behind.

Names come from job ids, which users and job files control (``../../x``, absolute paths, NUL,
very long names, any Unicode), and from the server's URLs (only a known image suffix is kept).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanobanana_async import (
    APIConnectionError,
    APIError,
    AsyncNanoBanana,
    Job,
    MalformedResponseError,
    NanoBananaError,
    RetryPolicy,
)
from nanobanana_async.batch.files import safe_filename

pytestmark = pytest.mark.anyio

KEY = "nb-files-0123456789abcdefGHIJ"
BASE = "https://api.nanobanana.test"
CDN = "https://cdn.images.test"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64

HOSTILE_IDS = [
    "../../x",
    "../../../../../../tmp/owned",
    "/etc/passwd",
    "/abs/path.png",
    "..",
    ".",
    "...",
    "a/../../b",
    "C:\\Windows\\evil",
    "\\\\server\\share",
    ".hidden",
    "-rf",
    "x" * 512,  # the longest id a Job takes
    "é" * 300,
    "名前/../../ファイル",
    "emoji 🍌 name",
    "trailing.",
    "tab\tand\nnewline",
    "%2e%2e%2fencoded",
]

URLS = [
    "https://cdn.test/a.png",
    "https://cdn.test/a.PNG?x=1",
    "https://cdn.test/a.jpg",
    "https://cdn.test/../../evil.png",
    "https://cdn.test/x.sh",
    "https://cdn.test/x.png%2F..%2F..%2Fevil",
    "https://cdn.test/",
    "not a url at all",
]


def assert_contained(directory: pathlib.Path, name: str) -> None:
    assert name, "empty name"
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert name not in (".", "..")
    assert not name.startswith(".")  # never hidden, never a relative component
    assert len(name.encode("utf-8")) <= 255  # fits every common file system
    target = (directory / name).resolve()
    assert target.parent == directory.resolve()


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", [*HOSTILE_IDS, "nul\x00byte", "\x00"])
@pytest.mark.parametrize("url", URLS)
def test_hostile_ids_and_urls_stay_inside(tmp_path: pathlib.Path, job_id: str, url: str) -> None:
    for position, count in ((0, 1), (0, 3), (2, 3)):
        assert_contained(tmp_path, safe_filename(job_id, position, count, url))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # Any text a Job accepts as an id (lone surrogates are refused there, see test_properties).
    job_id=st.text(min_size=1, max_size=400),
    position=st.integers(0, 20),
    extra=st.integers(0, 20),
    url=st.one_of(st.sampled_from(URLS), st.text(max_size=100)),
)
def test_any_id_stays_inside(
    tmp_path: pathlib.Path, job_id: str, position: int, extra: int, url: str
) -> None:
    count = position + 1 + extra
    assert_contained(tmp_path, safe_filename(job_id, position, count, url))
    assert_contained(tmp_path, safe_filename(job_id, 0, 1, url))


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=8, unique=True))
def test_distinct_ids_get_distinct_names(ids: list[str]) -> None:
    names = [safe_filename(i, 0, 1, "https://cdn.test/a.png") for i in ids]
    assert len(set(names)) == len(names)


@settings(max_examples=500, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.one_of(
                st.text(min_size=1, max_size=12),
                st.from_regex(r"\A[jJ][a-z]{1,3}([-+~][1-3])?\Z"),  # ids that look like names
                st.sampled_from(["two", "two-1", "two+1", "Two", "two~1", "two.png", "job"]),
            ),
            st.integers(1, 3),
            st.integers(0, 2),  # images the API returned beyond num
        ),
        max_size=12,
        unique_by=lambda t: t[0],
    )
)
def test_no_two_jobs_share_a_file_name_whoever_names_them(
    jobs: list[tuple[str, int, int]],
) -> None:
    # Each job named on its own, as workers in separate processes do: no shared state.
    files = [
        safe_filename(job_id, position, num, url)
        for job_id, num, extra in jobs
        for position in range(num + extra)
        for url in ("https://cdn.test/a.png",)
    ]
    # Distinct even on a file system that ignores case (macOS, Windows).
    assert len({f.casefold() for f in files}) == len(files)


def test_multi_image_names_never_meet_an_id_that_looks_like_one() -> None:
    # Job "two" with two images and a job whose id is "two-1": three images, three files.
    two = [safe_filename("two", i, 2, "https://cdn.test/a.png") for i in range(2)]
    assert two == ["two+1.png", "two+2.png"]
    assert safe_filename("two-1", 0, 1, "https://cdn.test/a.png") == "two-1.png"
    assert safe_filename("fox", 1, 1, "https://cdn.test/a.png") == "fox+2.png"  # an extra
    upper = safe_filename("Two", 0, 1, "https://cdn.test/a.png")
    assert re.fullmatch(r"two~[0-9a-f]{16}\.png", upper)


# -- a batch with hostile ids writes only inside its directory -------------------------------


def api(
    image: Callable[[httpx.Request], httpx.Response] | None = None,
    urls_per_job: Callable[[dict[str, Any]], list[str]] | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    counter = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal counter
        if request.url.path == "/v1/images/generate":
            sent = json.loads(request.content)
            counter += 1
            urls = (
                urls_per_job(sent)
                if urls_per_job
                else [f"{CDN}/img/{counter}-{i}.png" for i in range(sent["num"])]
            )
            url: str | list[str] = urls[0] if len(urls) == 1 else urls
            return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": url}})
        if image is not None:
            return image(request)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    return handler


def client_for(handler: Callable[[httpx.Request], Any]) -> AsyncNanoBanana:
    return AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(handler), retry_policy=FAST
    )


def all_files(root: pathlib.Path) -> set[pathlib.Path]:
    return {p for p in root.rglob("*") if p.is_file()}


async def test_a_batch_with_hostile_ids_writes_only_inside_its_directory(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    sandbox = tmp_path / "sandbox"
    out = sandbox / "deep" / "out"
    jobs = [Job(f"prompt {i}", id=job_id, num=1 + i % 2) for i, job_id in enumerate(HOSTILE_IDS)]
    async with client_for(api()) as client:
        report = await client.run_batch(jobs, concurrency=4, download_dir=out)
    assert report.succeeded == len(jobs), [str(r.error) for r in report.results if not r.ok]
    written = all_files(tmp_path)
    expected = {p for r in report.results for p in r.paths}
    assert len(expected) == sum(j.num for j in jobs)  # no two images share a file
    assert written == expected
    for path in written:
        assert path.parent == out
        assert_contained(out, path.name)
        assert path.read_bytes() == PNG


async def test_ids_that_look_like_multi_image_names_do_not_collide(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    # "two" with two images and a job whose id is literally "two-1": one file each.
    jobs = [Job("a", id="two", num=2), Job("b", id="two-1"), Job("c", id="two-2")]
    async with client_for(api()) as client:
        report = await client.run_batch(jobs, download_dir=tmp_path)
    paths = [p for r in report.results for p in r.paths]
    assert len(paths) == 4
    assert len(set(paths)) == 4, sorted(p.name for p in paths)


# -- partial files never remain ---------------------------------------------------------------


class Broken(httpx.AsyncByteStream):
    """Sends ``good`` chunks of PNG, then fails (or hangs, when ``hang`` is set)."""

    def __init__(self, good: int = 3, *, hang: bool = False) -> None:
        self.good = good
        self.hang = hang
        self.sent_some = anyio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.good):
            yield PNG
        self.sent_some.set()
        if self.hang:
            await anyio.sleep_forever()
        raise httpx.ReadError("connection reset by peer")

    async def aclose(self) -> None:
        pass


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


# Stopping a body early leaves httpx's nested async generators to the garbage collector, and
# Trio warns about each one; the SDK closes the response but cannot reach them
# (encode/httpx#3686). The files are what this module checks.
ABANDONED_GENERATORS = pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")


@ABANDONED_GENERATORS
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: httpx.Response(200, stream=Broken()), APIConnectionError),
        (lambda: httpx.Response(404, content=b"not found"), APIError),
        (lambda: httpx.Response(503, content=b"<html>busy</html>"), APIError),
        (lambda: httpx.Response(200, content=PNG * 10), MalformedResponseError),  # over max_bytes
        (
            lambda: httpx.Response(200, headers={"content-length": str(10**12)}, stream=Broken()),
            MalformedResponseError,
        ),
    ],
    ids=["reset-mid-body", "404", "503-html", "too-big", "declared-too-big"],
)
async def test_a_failed_download_leaves_nothing(
    anyio_backend: str,
    tmp_path: pathlib.Path,
    make: Callable[[], httpx.Response],
    error: type[NanoBananaError],
) -> None:
    dest = tmp_path / "img.png"
    async with client_for(lambda request: make()) as client:
        with pytest.raises(error):
            await client.download(f"{CDN}/x.png", dest, max_bytes=len(PNG) * 5)
    assert leftovers(tmp_path) == []


@ABANDONED_GENERATORS
async def test_a_failed_download_keeps_the_previous_file(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    dest = tmp_path / "img.png"
    dest.write_bytes(b"the good old image")
    async with client_for(lambda request: httpx.Response(200, stream=Broken())) as client:
        with pytest.raises(APIConnectionError):
            await client.download(f"{CDN}/x.png", dest)
    assert leftovers(tmp_path) == ["img.png"]
    assert dest.read_bytes() == b"the good old image"


@ABANDONED_GENERATORS
async def test_a_cancelled_download_leaves_nothing(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    stream = Broken(hang=True)
    async with client_for(lambda request: httpx.Response(200, stream=stream)) as client:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:

                async def download() -> None:
                    await client.download(f"{CDN}/x.png", tmp_path / "img.png")

                tg.start_soon(download)
                await stream.sent_some.wait()
                # Bytes are on disk in the temporary file at this point.
                assert any(name.endswith(".part") for name in leftovers(tmp_path))
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
    assert leftovers(tmp_path) == []


@ABANDONED_GENERATORS
async def test_a_batch_with_failing_downloads_leaves_only_complete_files(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    def image(request: httpx.Request) -> httpx.Response:
        # Every second image breaks half-way.
        if request.url.path.endswith("-1.png"):
            return httpx.Response(200, stream=Broken())
        return httpx.Response(200, content=PNG)

    jobs = [Job(f"p{i}", id=f"job{i}", num=2) for i in range(6)]
    async with client_for(api(image)) as client:
        report = await client.run_batch(jobs, concurrency=3, download_dir=tmp_path)
    assert report.failed == len(jobs)
    for result in report.results:
        assert result.generation is not None  # generated and paid for: the URLs are kept
        assert "could not be downloaded" in str(result.error)
        assert len(result.paths) == 1
    files = leftovers(tmp_path)
    assert files == sorted(f"job{i}+1.png" for i in range(6))
    for name in files:
        assert (tmp_path / name).read_bytes() == PNG


@ABANDONED_GENERATORS
async def test_a_batch_cancelled_mid_download_leaves_no_partial_file(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    streams: list[Broken] = []
    started = anyio.Event()

    def image(request: httpx.Request) -> httpx.Response:
        stream = Broken(hang=True)
        streams.append(stream)
        started.set()
        return httpx.Response(200, stream=stream)

    jobs = [Job(f"p{i}", id=f"job{i}") for i in range(8)]
    async with client_for(api(image)) as client:
        run = client.batch(jobs, concurrency=4, download_dir=tmp_path)
        with anyio.fail_after(10):
            async with run, anyio.create_task_group() as tg:

                async def consume() -> None:
                    async for _ in run:
                        pass

                tg.start_soon(consume)
                await started.wait()
                await streams[0].sent_some.wait()
                tg.cancel_scope.cancel()
    assert [n for n in leftovers(tmp_path) if n.endswith(".part")] == []
    assert leftovers(tmp_path) == []


async def test_a_bogus_content_length_is_ignored(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    def image(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=[(b"content-length", b"\xb2")], content=PNG)

    async with client_for(image) as client:
        path = await client.download(f"{CDN}/x.png", tmp_path / "x.png")
    assert path.read_bytes() == PNG
