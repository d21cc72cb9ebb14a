"""The emulator's image URLs and the PNGs behind them: a URL carries all it takes to redraw."""

from __future__ import annotations

import hashlib
import re

from . import png
from .requests import GenerateRequest

__all__ = ["image_urls", "render_path"]

_IMAGE_PATH = re.compile(
    r"/images/(?P<digest>[0-9a-f]{16})_(?P<width>[1-9][0-9]{0,3})x(?P<height>[1-9][0-9]{0,3})"
    r"_(?P<index>0|[1-9][0-9]{0,3})_(?P<serial>[1-9][0-9]{0,15})\.png"
)


def image_urls(base: str, request: GenerateRequest, serial: int) -> list[str]:
    """The URLs of one generation's images on origin ``base``."""
    digest = hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).hexdigest()
    width, height = png.size_for_ratio(request.image_size)
    return [
        f"{base}/images/{digest[:16]}_{width}x{height}_{i}_{serial}.png" for i in range(request.num)
    ]


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
