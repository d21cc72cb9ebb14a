"""Small, valid PNG images for the emulator, drawn from a seed with the standard library only."""

from __future__ import annotations

import colorsys
import functools
import hashlib
import struct
import zlib
from collections.abc import Iterable

__all__ = ["LONG_SIDE", "MAX_SIDE", "encode_png", "render", "size_for_ratio"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LONG_SIDE = 256
# Ids in URLs carry the dimensions; the cap keeps a hand-made URL from asking for a huge render.
MAX_SIDE = 1024
# A handful of row variants give a stepped vertical gradient without drawing every pixel in
# Python (a full 256 x 256 pass per image would dominate the emulator's CPU in benchmarks).
_ROW_VARIANTS = 8

Colour = tuple[int, int, int]


def size_for_ratio(ratio: str, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """Width and height for an aspect ratio such as ``"16:9"``, the longer side ``long_side``.

    >>> size_for_ratio("16:9"), size_for_ratio("1:8")
    ((256, 144), (32, 256))
    """
    left, sep, right = ratio.partition(":")
    if not sep or not left.isdigit() or not right.isdigit() or not int(left) or not int(right):
        raise ValueError(f"not an aspect ratio: {ratio!r}")
    w, h = int(left), int(right)
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rows: Iterable[bytes]) -> bytes:
    """Encode 8-bit RGB ``rows`` (``3 * width`` bytes each, ``height`` of them) as a PNG."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"image size out of range: {width}x{height}")
    # Filter type 0 (None) on every scanline: the rows repeat, so zlib does the work.
    raw = b"".join(b"\x00" + row for row in rows)
    if len(raw) != height * (1 + 3 * width):
        raise ValueError("rows do not match the image size")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _colour(hue: float, saturation: float, value: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _darken_table(factor: float) -> bytes:
    return bytes(min(255, round(v * factor)) for v in range(256))


@functools.lru_cache(maxsize=256)
def render(seed: str, width: int, height: int) -> bytes:
    """A PNG of ``width`` x ``height`` whose colours and pattern are derived from ``seed``.

    The same arguments always give the same bytes, and different seeds give visibly different
    images (hue, stripe widths, band heights), so a gallery of emulated results is readable.
    The cache is small and bounded: ids carry everything needed to redraw an image.
    """
    d = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    hue = d[0] / 256
    first = _colour(hue, 0.45 + d[1] / 640, 0.80 + d[2] / 1280)
    second = _colour(hue + 0.25 + d[3] / 1024, 0.55 + d[4] / 640, 0.70 + d[5] / 1280)
    accent = _colour(hue + 0.5, 0.35 + d[6] / 640, 0.95)
    stripe = 6 + d[7] % 30
    band = 6 + d[8] % 40
    offset = d[9] % stripe

    def row(start: Colour, end: Colour, shift: int) -> bytes:
        pixels = bytearray()
        for x in range(width):
            t = x / (width - 1) if width > 1 else 0.0
            colour = _mix(start, end, t)
            if ((x + shift) // stripe) % 2:
                colour = _mix(colour, accent, 0.45)
            pixels.extend(colour)
        return bytes(pixels)

    pair = (row(first, second, offset), row(second, first, offset + stripe // 2))
    # Darkening a row is a byte-wise table lookup: bytes.translate does it in C.
    variants = [
        [r.translate(_darken_table(1.0 - 0.35 * k / _ROW_VARIANTS)) for r in pair]
        for k in range(_ROW_VARIANTS)
    ]
    rows = (variants[y * _ROW_VARIANTS // height][(y // band) % 2] for y in range(height))
    return encode_png(width, height, rows)
