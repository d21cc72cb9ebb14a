"""Saving an image: a plain GET streamed to a temporary file, renamed into place when whole."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import cast

import anyio
import httpx

from ._http.body import declared_length
from ._http.failures import connection_error
from .endpoint import check_http_url
from .errors import APIError, HTTPExchange, MalformedResponseError

__all__ = ["MAX_DOWNLOAD_BYTES", "download_image"]

logger = logging.getLogger("nanobanana_async")

MAX_DOWNLOAD_BYTES = 256 << 20
_CHUNK = 64 << 10


async def download_image(
    http: httpx.AsyncClient,
    url: str,
    dest: pathlib.Path,
    *,
    headers_for: Callable[[httpx.URL], Mapping[str, str]],
    timeout: httpx.Timeout,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> pathlib.Path:
    """Stream the image at ``url`` to ``dest`` atomically and return ``dest``.

    The file appears complete or not at all: bytes go to a temporary file beside it, renamed
    into place at the end and removed on any failure or cancellation. ``headers_for`` gives
    the headers for a URL (the key only for the API's own origin).
    """
    target_url = check_http_url(url, what="image URL", param="url")
    await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
    request = http.build_request(
        "GET", target_url, headers=headers_for(target_url), timeout=timeout
    )
    shown = str(target_url.copy_with(query=None))
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        try:
            response = await http.send(request, stream=True, follow_redirects=True)
        except httpx.HTTPError as exc:
            failure = connection_error(exc, shown, sent=False)
            failure.exchange = HTTPExchange("GET", shown, request.headers.multi_items(), b"")
            raise failure from None
        try:
            if response.status_code >= 400:
                # The URL without its query, which may hold a signed URL's token; the body
                # (an error page) is not read.
                refused = APIError(f"downloading {shown} failed", status_code=response.status_code)
                refused.exchange = HTTPExchange(
                    "GET",
                    shown,
                    request.headers.multi_items(),
                    b"",
                    status_code=response.status_code,
                    response_headers=response.headers.multi_items(),
                )
                raise refused
            await _stream_to(response, tmp, max_bytes)
        except httpx.HTTPError as exc:
            raise connection_error(exc, shown, sent=False) from None
        finally:
            await response.aclose()
        os.replace(tmp, dest)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("downloaded %s to %s", shown, dest)
    return dest


async def _stream_to(response: httpx.Response, tmp: pathlib.Path, max_bytes: int) -> None:
    declared = declared_length(response.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise MalformedResponseError(
            f"image of {declared} bytes refused: larger than the {max_bytes}-byte cap",
            status_code=response.status_code,
        )
    size = 0
    # Closed explicitly when a download is cancelled: the garbage collector would otherwise
    # finalise the generator, and Trio warns about every one.
    chunks = contextlib.aclosing(cast("AsyncGenerator[bytes]", response.aiter_bytes(_CHUNK)))
    async with await anyio.open_file(tmp, "wb") as fh, chunks as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > max_bytes:
                raise MalformedResponseError(
                    f"image refused: larger than the {max_bytes}-byte cap",
                    status_code=response.status_code,
                )
            await fh.write(chunk)
