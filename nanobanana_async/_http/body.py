"""Reading response bodies under a size cap, whichever transport carried them."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

__all__ = ["BodyTooLarge", "declared_length", "read_capped"]


class BodyTooLarge(Exception):
    """A response body over the caller's cap; it was not read to the end."""

    def __init__(self, status_code: int, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status_code} response body over the cap")
        self.status_code = status_code
        self.headers = headers


def declared_length(value: str | None) -> int | None:
    """A ``Content-Length`` value, None when absent or not plain ASCII digits."""
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


async def read_capped(
    chunks: AsyncIterable[bytes],
    declared: int | None,
    limit: int,
    status_code: int,
    headers: Mapping[str, str],
) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it is known to exceed ``limit``.

    A declared length over the limit is refused before reading a byte; without one, reading
    stops at the first chunk past the limit.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(status_code, headers)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(status_code, headers)
        parts.append(chunk)
    return b"".join(parts)
