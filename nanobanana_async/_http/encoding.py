"""Content-Encoding on the direct path, decoded by httpx's own decoders under a size cap.

The h11 pool's direct path reads raw bytes and builds no httpx objects. A server may compress
even when asked for ``identity``, so a response that declares a ``Content-Encoding`` is
decoded through an ``httpx.Response``: the same encodings as the httpx path (gzip, deflate,
br and zstd when httpx can decode them here), stacked ones in reverse order, unknown ones
passed through, and ``httpx.DecodingError`` for a body that does not decode. Responses without
the header (nearly all) never reach this module.

The cap applies to the decoded size, as on the httpx path. httpx decodes each chunk it reads
in one call, so a gzip bomb briefly costs up to about a thousand times a 64 KiB read there;
here the encoded body is fed to the decoders in 1 KiB slices, so no decoded piece exceeds about
1 MiB (gzip and deflate expand at most ~1032:1) before the cap stops the work. The h11 pool's
``handle_async_request`` hands httpx encoded bodies in slices of the same size
(:data:`DECODE_SLICE`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Iterator, Mapping

import httpx

from .body import BodyTooLarge, read_capped

__all__ = ["DECODE_SLICE", "read_encoded"]

#: Bytes of an encoded body handed to httpx's decoders at a time (gzip: ~1 MiB out at most).
DECODE_SLICE = 1 << 10


def _encoded_limit(limit: int) -> int:
    # Compressing incompressible data grows it a little (deflate: ~0.03% plus a header), so an
    # encoded body slightly over the cap can still decode under it, as the httpx path allows.
    return limit + (limit >> 8) + 1024


class _Slices(httpx.SyncByteStream):
    """An encoded body handed to httpx's decoders a slice at a time."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        data = self._data
        for start in range(0, len(data), DECODE_SLICE):
            yield data[start : start + DECODE_SLICE]


async def read_encoded(
    chunks: AsyncIterable[bytes],
    declared: int | None,
    limit: int,
    status_code: int,
    headers: Mapping[str, str],
    raw_headers: Iterable[tuple[bytes, bytes]],
) -> bytes:
    """The decoded body, or :class:`BodyTooLarge` once it is known to exceed ``limit`` bytes.

    ``declared`` is the (encoded) ``Content-Length``: over ``limit``, the body is refused
    unread, as httpx's path does. ``raw_headers`` are the response's, for httpx to pick the
    decoders; ``headers`` go into :class:`BodyTooLarge`.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(status_code, headers)
    encoded = await read_capped(chunks, None, _encoded_limit(limit), status_code, headers)
    response = httpx.Response(status_code, headers=list(raw_headers), stream=_Slices(encoded))
    parts: list[bytes] = []
    size = 0
    for piece in response.iter_bytes():
        size += len(piece)
        if size > limit:
            response.close()
            raise BodyTooLarge(status_code, headers)
        parts.append(piece)
    return b"".join(parts)
