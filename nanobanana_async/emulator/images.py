"""The emulator's image URLs and the PNGs behind them: a URL carries all it takes to redraw."""

from __future__ import annotations

import hashlib
import re

from . import png
from .requests import GenerateRequest

__all__ = ["bad_url", "image_urls", "render_path", "with_odd_text"]

_IMAGE_PATH = re.compile(
    r"/images/(?P<digest>[0-9a-f]{16})_(?P<width>[1-9][0-9]{0,3})x(?P<height>[1-9][0-9]{0,3})"
    r"_(?P<index>0|[1-9][0-9]{0,3})_(?P<serial>[1-9][0-9]{0,15})\.png"
)


def image_urls(
    base: str, request: GenerateRequest, serial: int, count: int | None = None
) -> list[str]:
    """The URLs of one generation's images on origin ``base`` (``count``, default ``num``)."""
    digest = hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).hexdigest()
    width, height = png.size_for_ratio(request.image_size)
    return [
        f"{base}/images/{digest[:16]}_{width}x{height}_{i}_{serial}.png"
        for i in range(request.num if count is None else count)
    ]


def bad_url(kind: str, url: str) -> str:
    """A string in place of ``url`` that no client can fetch (``kind``: ``BAD_URL_KINDS``)."""
    path = "/" + url.split("://", 1)[-1].partition("/")[2]
    if kind == "port_out_of_range":
        return f"http://127.0.0.1:99999{path}"
    if kind == "long_host_label":
        return f"http://{'x' * 64}.invalid{path}"
    if kind == "broken_ipv6":
        return f"http://[::1{path}"
    if kind == "space_in_host":
        return f"http://bad host.invalid{path}"
    if kind == "no_host":
        return f"http://{path}"
    if kind == "empty":
        return ""
    if kind == "port_zero":
        return f"http://127.0.0.1:0{path}"
    if kind == "ftp":
        return f"ftp://127.0.0.1{path}"
    raise ValueError(f"unknown bad URL kind {kind!r}")


def with_odd_text(url: str, odd: str) -> str:
    """``url`` with the lone surrogates ``odd`` inserted before its ``.png``."""
    stem, dot, suffix = url.rpartition(".png")
    return f"{stem}{odd}{dot}{suffix}" if dot else url + odd


def render_path(path: str) -> bytes | None:
    """The PNG for an image path, None when the path is not one of ours (or too large)."""
    match = _IMAGE_PATH.fullmatch(path)
    if match is None:
        return None
    width, height = int(match["width"]), int(match["height"])
    if width > png.MAX_SIDE or height > png.MAX_SIDE:
        return None
    # The serial only makes URLs unique per generation; the picture depends on the prompt
    # and the image's index within its generation.
    return png.render(f"{match['digest']}/{match['index']}", width, height)
