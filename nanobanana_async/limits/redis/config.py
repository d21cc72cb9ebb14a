"""Where the shared limits live: the URL (shown without credentials), namespace and caps."""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

import attrs

from ...errors import InvalidRequestError
from ..local import check_caps

__all__ = ["RedisConfig", "safe_url"]

SCHEMES = ("redis", "rediss", "unix")
# Options RedisLimits.from_url takes from the query string (the rest goes to coredis).
OPTIONS = ("namespace", "max_per_second", "max_credits", "lease", "timeout")


def safe_url(url: str) -> str:
    """``url`` without user, password or query (which may hold a password): for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable Redis URL>"
    if ":" in host:
        host = f"[{host}]"
    credentials = "***@" if parts.username or parts.password else ""
    return urllib.parse.urlunsplit((parts.scheme, f"{credentials}{host}{port}", parts.path, "", ""))


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidRequestError(
            f"{name} must be a positive number of seconds, got {value!r}", param=name
        )
    return float(value)


@attrs.frozen
class RedisConfig:
    """A validated RedisLimits configuration."""

    url: str = attrs.field(repr=False)
    namespace: str
    max_per_second: float | None
    max_credits: int | None
    lease: float
    timeout: float

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    @property
    def password(self) -> str | None:
        """The password in the URL (redacted from every message), if any."""
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qs(parts.query)
        return parts.password or next(iter(query.get("password", [])), None)

    @classmethod
    def build(
        cls,
        url: str,
        namespace: str,
        max_per_second: float | None,
        max_credits: int | None,
        lease: float,
        timeout: float,
    ) -> RedisConfig:
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in SCHEMES:
            shown = safe_url(url) if isinstance(url, str) else repr(url)
            raise InvalidRequestError(
                f"RedisLimits needs a redis://, rediss:// or unix:// URL, got {shown}",
                param="url",
            )
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in "{}"):
            raise InvalidRequestError(
                f"namespace must be a non-empty string without braces, got {namespace!r}",
                param="namespace",
            )
        check_caps(max_per_second, max_credits)
        return cls(
            url,
            namespace,
            max_per_second,
            max_credits,
            _seconds("lease", lease),
            _seconds("timeout", timeout),
        )

    @classmethod
    def split_url(cls, url: str) -> tuple[str, dict[str, Any]]:
        """``url`` without the RedisLimits options of its query string, and those options."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        options: dict[str, Any] = {}
        rest = []
        for name, value in query:
            if name not in OPTIONS:
                rest.append((name, value))
                continue
            try:
                if name in ("max_per_second", "lease", "timeout"):
                    options[name] = float(value)
                elif name == "max_credits":
                    options[name] = int(value)
                else:
                    options[name] = value
            except ValueError:
                raise InvalidRequestError(
                    f"{name}={value!r} in the limits URL is not a number", param=name
                ) from None
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
        return clean, options
