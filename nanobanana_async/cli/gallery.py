"""The batch gallery: ``index.html`` beside the downloaded images, paged and filtered.

``index.html`` shows the totals, filters by status and by model, and the first page of jobs;
``gallery/`` holds the rest: ``index.js`` (one character per job for its status and its model),
the cards in chunks of :data:`CHUNK_SIZE` (``cards-NNNNN.js``), and ``app.js``
(``gallery.js`` in this package), which shows any page of any filter by loading only the
chunks that page needs. At 100,000 jobs a page is still one index and a few chunks, never the
whole batch; without JavaScript the first page still shows.

Prompts, errors and ids are untrusted text and are always escaped, here, before they become a
card (the script inserts cards as Python wrote them). Images are referenced by relative paths
inside the output directory, and the page loads nothing from the network, so the directory
can be zipped, moved or opened offline.
"""

from __future__ import annotations

import collections
import datetime
import html
import importlib.resources
import json
import os
import pathlib
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ..batch import JobResult

__all__ = [
    "CHUNK_SIZE",
    "GALLERY_DIR",
    "PAGE_SIZE",
    "GallerySummary",
    "image_href",
    "paid",
    "render_gallery",
    "write_gallery",
]

#: Jobs on one page of the gallery.
PAGE_SIZE = 100
#: Cards in one chunk file (a page needs one or two chunks unfiltered, a few more filtered).
CHUNK_SIZE = 500
#: Where the gallery's data and script go, inside the output directory.
GALLERY_DIR = "gallery"
_STATUS_CODES = {"succeeded": "s", "failed": "f", "skipped": "k"}


@attrs.frozen
class GallerySummary:
    """The totals shown in the gallery's header."""

    source: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    credits_spent: int
    elapsed: float
    note: str | None = None


def image_href(path: pathlib.Path | str, out_dir: pathlib.Path) -> str | None:
    """A relative, URL-quoted link from ``out_dir/index.html`` to ``path``; ``None`` when the
    file is not inside ``out_dir`` (the gallery never points outside its directory)."""
    try:
        rel = pathlib.Path(os.path.abspath(path)).relative_to(os.path.abspath(out_dir))
    except ValueError:
        return None
    if not rel.parts:
        return None
    return urllib.parse.quote(rel.as_posix())


_CSS = """
:root { color-scheme: light dark; --bg: #f4f4f6; --card: #fff; --fg: #1d1d22; --muted: #6b6b76;
  --line: #dedee3; --ok: #1a7f37; --bad: #c9182b; --skip: #9a6700; }
@media (prefers-color-scheme: dark) { :root { --bg: #16161a; --card: #202026; --fg: #ececf1;
  --muted: #9d9daa; --line: #33333b; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0 0 20px; color: var(--muted); }
header .note { color: var(--skip); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  overflow: hidden; display: flex; flex-direction: column; }
.thumbs { display: flex; gap: 4px; height: 220px; padding: 6px; align-items: center;
  justify-content: center; background: repeating-conic-gradient(#8881 0 25%, #0000 0 50%)
  50% / 16px 16px; }
.thumbs a { flex: 1 1 0; height: 100%; min-width: 0; display: flex; align-items: center;
  justify-content: center; }
.thumbs img { width: 100%; height: 100%; object-fit: contain; }
.noimg { color: var(--muted); font-style: italic; }
.body { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 6px; }
.prompt { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.meta { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.status { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; color: #fff; }
.succeeded { background: var(--ok); } .failed { background: var(--bad); }
.skipped { background: var(--skip); }
.error { margin: 0; color: var(--bad); font: 12px/1.4 ui-monospace, monospace;
  white-space: pre-wrap; overflow-wrap: anywhere; }
.filters { display: flex; flex-wrap: wrap; gap: 12px; margin: 0 0 12px; color: var(--muted); }
.filters select { margin-left: 4px; font: inherit; }
#pager { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin: 0 0 16px; }
#pager .where { color: var(--muted); }
#pager span:not(.where) { color: var(--line); }
html:not(.scripted) .filters, html:not(.scripted) #pager { display: none; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def paid(result: JobResult) -> int:
    """Credits a job cost, including those paid by an earlier run it was resumed from."""
    if result.resumed and result.generation is not None:
        return result.generation.credits
    return result.credits


def _card(result: JobResult, out_dir: pathlib.Path) -> str:
    job = result.job
    prompt = job.prompt if job is not None else "(invalid job)"
    thumbs: list[str] = []
    for path in result.paths:
        href = image_href(path, out_dir)
        if href is not None:
            thumbs.append(
                f'<a href="{_esc(href)}"><img src="{_esc(href)}" alt="{_esc(prompt[:200])}" '
                'loading="lazy" decoding="async"></a>'
            )
    if not thumbs:
        thumbs.append('<span class="noimg">no image</span>')
    meta = []
    if job is not None:
        meta += [job.model, job.image_size]
        if job.num > 1:
            meta.append(f"{job.num} images")
    meta.append(f"{paid(result)} credits")
    if result.credits_may_have_been_spent:
        meta.append(f"{result.credits_may_have_been_spent} may have been spent")
    if result.partial:
        meta.append("fewer images than asked")
    if result.resumed:
        meta.append("from an earlier run")
    problem = result.reason or (str(result.error) if result.error is not None else None)
    problem_html = f'<p class="error">{_esc(problem)}</p>' if problem else ""
    model = job.model if job is not None else ""
    return (
        f'<article class="card" id="job-{result.index + 1}" data-status="{_esc(result.status)}"'
        f' data-model="{_esc(model)}">'
        f'<div class="thumbs">{"".join(thumbs)}</div>'
        '<div class="body">'
        f'<div><span class="status {_esc(result.status)}">{_esc(result.status)}</span> '
        f'<span class="meta">#{result.index + 1}'
        + (f" · {_esc(result.id)}" if result.id else "")
        + "</span></div>"
        f'<p class="prompt">{_esc(prompt)}</p>'
        f'<div class="meta">{" · ".join(_esc(m) for m in meta)}</div>'
        f"{problem_html}"
        "</div></article>"
    )


def _index(ordered: Sequence[JobResult]) -> dict[str, Any]:
    """What the script filters on: a character per job for its status and for its model."""
    models = sorted({r.job.model if r.job is not None else "" for r in ordered})
    code = {model: chr(48 + i) for i, model in enumerate(models)}
    return {
        "total": len(ordered),
        "pageSize": PAGE_SIZE,
        "chunkSize": CHUNK_SIZE,
        "statusCodes": _STATUS_CODES,
        "statuses": "".join(_STATUS_CODES[r.status] for r in ordered),
        "models": models,
        "modelOf": "".join(code[r.job.model if r.job is not None else ""] for r in ordered),
    }


def _filters(ordered: Sequence[JobResult]) -> str:
    statuses = collections.Counter[str](r.status for r in ordered)
    models = collections.Counter(r.job.model if r.job is not None else "" for r in ordered)
    status_options = [f'<option value="">all ({len(ordered)})</option>'] + [
        f'<option value="{status}">{status} ({statuses[status]})</option>'
        for status in _STATUS_CODES
    ]
    model_options = ['<option value="">all models</option>'] + [
        f'<option value="{_esc(model)}">{_esc(model or "(invalid job)")} ({count})</option>'
        for model, count in sorted(models.items())
    ]
    return (
        '<form class="filters" id="filters">'
        f'<label>status<select id="filter-status">{"".join(status_options)}</select></label>'
        f'<label>model<select id="filter-model">{"".join(model_options)}</select></label>'
        "</form>\n"
        '<nav id="pager"></nav>\n'
    )


def render_gallery(
    results: Sequence[JobResult], out_dir: pathlib.Path, summary: GallerySummary
) -> str:
    """The gallery's ``index.html`` for ``results``: the totals, the filters and the first
    page of jobs in input order (the rest are in ``gallery/``, see :func:`write_gallery`)."""
    ordered = sorted(results, key=lambda r: r.index)
    cards = "\n".join(_card(r, out_dir) for r in ordered[:PAGE_SIZE])
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    total_paid = sum(paid(r) for r in results)
    credits = f"{total_paid} credits"
    if total_paid != summary.credits_spent:
        credits += f" ({summary.credits_spent} in the last run)"
    line = (
        f"{summary.total} jobs: {summary.succeeded} succeeded, {summary.failed} failed, "
        f"{summary.skipped} skipped · {credits} · {summary.elapsed:.1f} s · {when}"
    )
    note = f'<p class="note">{_esc(summary.note)}</p>' if summary.note else ""
    more = ""
    if len(ordered) > PAGE_SIZE:
        more = (
            f'<noscript><p class="note">The first {PAGE_SIZE} of {len(ordered)} jobs: the '
            "other pages and the filters need JavaScript.</p></noscript>\n"
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Nothing on this page may reach the network: it shows untrusted prompts offline. Its
        # only scripts are the gallery's own files beside it.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "script-src 'self' file:; img-src 'self' file: data:; style-src 'unsafe-inline'\">\n"
        f"<title>{_esc(summary.source)} · nanobanana gallery</title>\n"
        f"<style>{_CSS}</style></head>\n"
        f"<body><header><h1>{_esc(summary.source)}</h1><p>{_esc(line)}</p>{note}</header>\n"
        f"{_filters(ordered)}{more}"
        f'<main class="grid" id="cards">\n{cards}\n</main>\n'
        f'<script src="{GALLERY_DIR}/index.js"></script>\n'
        f'<script src="{GALLERY_DIR}/app.js"></script>\n'
        "</body></html>\n"
    )


def _write(target: pathlib.Path, text: str) -> None:
    # Atomically: a gallery open in a browser never sees half a file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_gallery(
    results: Sequence[JobResult], out_dir: pathlib.Path, summary: GallerySummary
) -> pathlib.Path:
    """Write ``out_dir/index.html`` and its ``gallery/`` folder; return the page's path.

    The chunks and the index are written first and ``index.html`` last, each atomically;
    chunks left by an earlier, longer run are removed.
    """
    ordered = sorted(results, key=lambda r: r.index)
    folder = out_dir / GALLERY_DIR
    folder.mkdir(exist_ok=True)
    written = set()
    for number, start in enumerate(range(0, len(ordered), CHUNK_SIZE)):
        cards = [_card(r, out_dir) for r in ordered[start : start + CHUNK_SIZE]]
        name = f"cards-{number:05d}.js"
        # JSON with every non-ASCII character escaped is a JavaScript literal (U+2028 too).
        _write(folder / name, f"nbGalleryCards({number}, {json.dumps(cards)});\n")
        written.add(name)
    for stale in folder.glob("cards-*.js"):
        if stale.name not in written:
            stale.unlink(missing_ok=True)
    _write(folder / "index.js", f"window.nbGallery = {json.dumps(_index(ordered))};\n")
    script = importlib.resources.files(__package__).joinpath("gallery.js").read_text("utf-8")
    _write(folder / "app.js", script)
    target = out_dir / "index.html"
    _write(target, render_gallery(ordered, out_dir, summary))
    return target
