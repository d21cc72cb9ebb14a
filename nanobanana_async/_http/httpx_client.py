"""The ``httpx.AsyncClient`` the SDK builds for itself (never a caller's client)."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["SDKAsyncClient"]


class _LazyCookies(httpx.Cookies):
    # httpx parses every response for cookies through urllib's cookiejar, about a sixth of the
    # client's CPU per request; the API sets none, so only responses that do are parsed.
    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class SDKAsyncClient(httpx.AsyncClient):
    """The ``httpx.AsyncClient`` the SDK builds for itself (never a caller's client).

    Behaves as httpx's, except that a response without ``Set-Cookie`` skips cookie parsing.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sdk_cookies: httpx.Cookies = _LazyCookies(kwargs.get("cookies"))

    @property
    def cookies(self) -> httpx.Cookies:
        return self._sdk_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._sdk_cookies = _LazyCookies(cookies)
