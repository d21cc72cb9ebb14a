"""Driving the emulator in-process with httpx, and reading the PNGs it serves."""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from nanobanana_async.emulator import Emulator

BASE = "https://api.nanobananaapi.dev"
GENERATE = "/v1/images/generate"
KEY = "sk-emulator-test-0123456789"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLASH = "gemini-3.1-flash-image-preview"


@asynccontextmanager
async def client_for(
    emulator: Emulator, key: str | None = KEY, base_url: str = BASE
) -> AsyncIterator[httpx.AsyncClient]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=base_url, headers=headers
    ) as client:
        yield client


async def generate(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post(GENERATE, json={"prompt": "a yellow banana", **body})


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and decompressed scanlines, checking every CRC on the way."""
    assert data[:8] == PNG_MAGIC
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw
