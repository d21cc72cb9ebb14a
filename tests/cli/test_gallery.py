"""The batch gallery: escaping and paths, and a real headless browser rendering it."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

from nanobanana_async import Generation, InvalidRequestError, Job, JobResult, ServerError
from nanobanana_async.cli.gallery import (
    CHUNK_SIZE,
    GALLERY_DIR,
    PAGE_SIZE,
    GallerySummary,
    image_href,
    render_gallery,
    write_gallery,
)

SUMMARY = GallerySummary(
    source="<jobs>.txt", total=3, succeeded=1, failed=1, skipped=1, credits_spent=2, elapsed=1.0
)
HOSTILE = "<script>alert('x')</script> & \"quoted\" <img src=x onerror=alert(1)>"


def _results(out: pathlib.Path) -> list[JobResult]:
    ok_job = Job(HOSTILE, id="ok")
    generation = Generation(
        urls=("https://img.example/a.png",),
        model=ok_job.model,
        image_size="1:1",
        num=1,
        credits=2,
        elapsed=0.1,
    )
    return [
        JobResult(
            0,
            ok_job,
            "succeeded",
            "ok",
            generation=generation,
            credits=2,
            paths=(out / "ok image #1.png", out.parent / "outside.png"),
        ),
        JobResult(1, Job("fails"), "failed", "f", error=InvalidRequestError("</p><b>bad</b>")),
        JobResult(2, Job("skip"), "skipped", "s", reason="over budget: <needs> 2 credits"),
    ]


def test_every_user_text_is_escaped(tmp_path: pathlib.Path) -> None:
    page = render_gallery(_results(tmp_path), tmp_path, SUMMARY)
    assert "<script>" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "&lt;/p&gt;&lt;b&gt;bad&lt;/b&gt;" in page
    assert "over budget: &lt;needs&gt; 2 credits" in page
    assert "<title>&lt;jobs&gt;.txt" in page


def test_images_are_relative_and_never_outside_the_directory(tmp_path: pathlib.Path) -> None:
    page = render_gallery(_results(tmp_path), tmp_path, SUMMARY)
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources == ["ok%20image%20%231.png"]  # the file outside DIR is not linked
    # Nothing on the page reaches the network: no remote URLs, scripts or stylesheets.
    assert "https://img.example" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<link" not in page
    # The only scripts are the gallery's own files beside the page.
    assert re.findall(r"<script[^>]*>", page) == [
        '<script src="gallery/index.js">',
        '<script src="gallery/app.js">',
    ]
    assert image_href(tmp_path / "sub" / "a b.png", tmp_path) == "sub/a%20b.png"
    assert image_href(tmp_path / ".." / "x.png", tmp_path) is None
    assert image_href(tmp_path, tmp_path) is None


def test_statuses_and_errors_are_shown(tmp_path: pathlib.Path) -> None:
    path = write_gallery(_results(tmp_path), tmp_path, SUMMARY)
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "index.html"
    for status in ("succeeded", "failed", "skipped"):
        assert f'data-status="{status}"' in page
    assert "2 credits" in page
    assert "gemini-2.5-flash-image" in page
    assert not list(tmp_path.glob(".index.html.*"))  # the temporary file was renamed


# -- a real browser ----------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no chromium on PATH: the browser check needs Debian's chromium "
        "(apt-get install -y chromium; .ci/run installs it when it can)"
    )


def _browser(chromium: str, tmp: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1200,900",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _screenshot(chromium: str, tmp: pathlib.Path, page: pathlib.Path, name: str) -> pathlib.Path:
    target = tmp / name
    proc = _browser(chromium, tmp, f"--screenshot={target}", page.as_uri())
    assert target.is_file(), proc.stderr[-2000:]
    return target


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8, depth
            assert color in (2, 6), color
            assert interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        filt, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up, corner = prev[x], prev[x - channels] if x >= channels else 0
            predictor = (0, left, up, (left + up) // 2, _paeth(left, up, corner))[filt]
            line[x] = (line[x] + predictor) & 0xFF
        prev = line
        rgb = bytes(line) if channels == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3)
        rows.append(rgb)
    return width, height, rows


def _pixels(png: pathlib.Path) -> list[tuple[int, ...]]:
    width, _, rows = decode_png(png.read_bytes())
    return [tuple(row[i : i + 3]) for row in rows for i in range(0, width * 3, 3)]


@pytest.mark.slow
def test_gallery_renders_its_images_in_a_real_browser(tmp_path: pathlib.Path) -> None:
    chromium = _chromium()
    jobs = tmp_path / "jobs.jsonl"
    rows = [
        {"prompt": "a red fox in snow", "size": "1:1"},
        {"prompt": "a wide panorama of mountains", "size": "16:9"},
        {"prompt": "a tall lighthouse", "size": "9:16", "num": 2},
        {"prompt": HOSTILE, "size": "4:3"},
        {"prompt": "a field of tulips", "size": "3:2"},
    ]
    jobs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanobanana_async",
            "batch",
            str(jobs),
            "--emulator",
            "-o",
            str(tmp_path / "out"),
            "--yes",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    index = out / "index.html"
    page = index.read_text(encoding="utf-8")
    assert page.count("<img ") == 6

    # 1. The browser itself reports every <img> decoded: a copy of the page gets a script that
    #    writes what it saw into the DOM, and --dump-dom prints the DOM after load.
    probe = out / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        "const pre = document.createElement('pre'); pre.id = 'probe';"
        "pre.textContent = `images=${imgs.length} decoded=${ok}`;"
        "document.body.append(pre);});</script>"
    )
    probe.write_text(
        page.replace('loading="lazy"', 'loading="eager"')
        .replace("script-src 'self' file:;", "script-src 'self' file: 'unsafe-inline';")
        .replace("</body>", script + "</body>"),
        encoding="utf-8",
    )
    dom = _browser(
        chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()
    ).stdout
    assert '<pre id="probe">images=6 decoded=6</pre>' in dom, dom[-3000:]
    assert "<script>alert" not in dom.split('id="cards"', 1)[1]

    # 2. The screenshot of the real page shows the images: it differs from the same page with
    #    the images taken out, over a large share of the pixels, and is not blank.
    bare = out / "bare.html"
    # (without its scripts too, which would draw the cards again from gallery/, images and all)
    bare.write_text(re.sub(r"<img [^>]*>|<script [^>]*></script>", "", page), encoding="utf-8")
    shot = _screenshot(chromium, tmp_path, index, "gallery.png")
    blank = _screenshot(chromium, tmp_path, bare, "bare.png")
    with_images, without = _pixels(shot), _pixels(blank)
    assert len(with_images) == len(without) == 1200 * 900
    assert len(set(with_images)) > 50, "the screenshot is (nearly) blank"
    changed = sum(a != b for a, b in zip(with_images, without, strict=True))
    assert changed > 0.05 * len(with_images), f"only {changed} pixels show images"
    shutil.copy(shot, out / "screenshot.png")


# -- 100,000 jobs: paged, filtered, in a real browser (issue 20, item 10) ----------------------

MANY = 100_000
MODELS = ("gemini-2.5-flash-image", "gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview")
HOSTILE_AT = 54_321  # on page 544 of the unfiltered gallery


def _status(i: int) -> str:
    return "failed" if i % 7 == 3 else "skipped" if i % 11 == 5 else "succeeded"


def _many_results() -> list[JobResult]:
    results = []
    for i in range(MANY):
        status = _status(i)
        prompt = HOSTILE if i == HOSTILE_AT else f"prompt number {i}"
        results.append(
            JobResult(
                i,
                Job(prompt, model=MODELS[i % 3]),
                status,  # type: ignore[arg-type]
                f"j{i}",
                error=ServerError("server error", status_code=500) if status == "failed" else None,
                reason="over budget" if status == "skipped" else None,
                credits=2 if status == "succeeded" else 0,
            )
        )
    return results


CARD = re.compile(r'<article class="card" id="job-(\d+)" data-status="(\w+)" data-model="([^"]*)"')
WHERE = re.compile(r'<span class="where">page (\d+) of (\d+) · (\d+) matching jobs?</span>')


def _view(chromium: str, tmp: pathlib.Path, page: pathlib.Path, fragment: str) -> str:
    proc = _browser(
        chromium, tmp, "--virtual-time-budget=20000", "--dump-dom", page.as_uri() + fragment
    )
    assert "data-view=" in proc.stdout, proc.stderr[-2000:]  # the script drew this view
    return proc.stdout


@pytest.fixture(scope="module")
def big_gallery(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("big")
    summary = GallerySummary(
        source="many.txt", total=MANY, succeeded=0, failed=0, skipped=0, credits_spent=0, elapsed=1
    )
    return write_gallery(_many_results(), out, summary)


def test_a_100000_job_gallery_stays_small_per_page(big_gallery: pathlib.Path) -> None:
    page = big_gallery.read_text(encoding="utf-8")
    assert len(page.encode()) < 150_000  # the first page and the filters, not 100,000 cards
    assert page.count('class="card"') == PAGE_SIZE
    folder = big_gallery.parent / GALLERY_DIR
    chunks = sorted(folder.glob("cards-*.js"))
    assert len(chunks) == MANY // CHUNK_SIZE
    assert max(chunk.stat().st_size for chunk in chunks) < 400_000
    assert (folder / "index.js").stat().st_size < 400_000
    assert ">failed (" in page
    assert f">{MODELS[1]} (" in page


@pytest.mark.slow
def test_a_100000_job_gallery_pages_and_filters_in_a_real_browser(
    big_gallery: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    chromium = _chromium()

    def expect(fragment: str, indexes: list[int], page: int) -> None:
        dom = _view(chromium, tmp_path, big_gallery, fragment)
        cards = CARD.findall(dom)
        pages = max(1, -(-len(indexes) // PAGE_SIZE))
        shown = indexes[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        assert [int(number) - 1 for number, _, _ in cards] == shown, fragment
        for number, status, model in cards:
            i = int(number) - 1
            assert (status, model) == (_status(i), MODELS[i % 3])
        where = WHERE.search(dom)
        assert where is not None, dom[-2000:]
        assert where.groups() == (str(page), str(pages), str(len(indexes)))

    everything = list(range(MANY))
    failed_pro = [i for i in everything if _status(i) == "failed" and i % 3 == 1]
    skipped = [i for i in everything if _status(i) == "skipped"]
    expect("", everything, 1)
    expect("#page=1000", everything, 1000)
    expect(f"#status=failed&model={MODELS[1]}&page=3", failed_pro, 3)
    last = -(-len(skipped) // PAGE_SIZE)
    expect(f"#status=skipped&page={last}", skipped, last)  # a short last page
    expect("#status=skipped&page=99999", skipped, last)  # past the end: the last page
    expect("#model=no-such-model", [], 1)

    # A hostile prompt on a page loaded from its chunk is shown as text, never run.
    dom = _view(chromium, tmp_path, big_gallery, f"#page={HOSTILE_AT // PAGE_SIZE + 1}")
    grid = dom.split('id="cards"', 1)[1]
    assert f'id="job-{HOSTILE_AT + 1}"' in grid
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in grid
    assert "<script>alert" not in grid
    assert "<img src=x" not in grid
