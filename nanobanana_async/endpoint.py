"""Where the API is and how the client authenticates to it: key, base URL, origins, proxies."""

from __future__ import annotations

import ipaddress
import os
import urllib.request

import attrs
import httpx

from ._version import __version__
from .errors import InvalidRequestError

__all__ = [
    "DEFAULT_BASE_URL",
    "GENERATE_PATH",
    "USER_AGENT",
    "Endpoint",
    "check_http_url",
    "env_proxy_applies",
    "is_loopback",
    "user_agent_for",
]

DEFAULT_BASE_URL = "https://api.nanobananaapi.dev"
GENERATE_PATH = "/v1/images/generate"
USER_AGENT = f"nanobanana-async/{__version__}"
_HTTPX_USER_AGENT = f"python-httpx/{httpx.__version__}"
_NAMES_SDK = {"User-Agent": USER_AGENT}


def user_agent_for(client_headers: httpx.Headers) -> dict[str, str]:
    """The ``User-Agent`` a request through a client with ``client_headers`` must add: the
    SDK's, unless the client names its own (httpx's default names only httpx)."""
    agent = client_headers.get("user-agent")
    return _NAMES_SDK if agent is None or agent == _HTTPX_USER_AGENT else {}


Origin = tuple[str, str, int | None]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def origin_of(url: httpx.URL) -> Origin:
    """Scheme, host and port of ``url``, the default port filled in."""
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, url.port or default_port)


def env_proxy_applies(url: httpx.URL) -> bool:
    """Whether ``url`` should go through a proxy named in the environment.

    Never for a loopback host: no proxy can reach this machine's loopback (an emulator).
    """
    if is_loopback(url.host):
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.host)


def _host_problem(url: httpx.URL) -> str | None:
    """Why no connection could ever be made to ``url``'s host and port, or None."""
    if not url.host:
        return "it has no host"
    if url.port is not None and not 0 < url.port < 65536:
        return f"port {url.port} is out of range"
    host = url.raw_host
    if _is_ip(host):
        return None
    labels = host.rstrip(b".").split(b".")
    if len(host) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        return "its host name is not a valid DNS name (labels of 1 to 63 characters)"
    return None


def _is_ip(host: bytes) -> bool:
    try:
        ipaddress.ip_address(host.decode("ascii").strip("[]"))
    except ValueError:
        return False
    return True


def check_http_url(url: str, *, what: str, param: str) -> httpx.URL:
    """``url`` parsed, or :class:`InvalidRequestError` when no request could ever reach it.

    Catches here, with a clear message, what would otherwise fail deep in a connection
    attempt as a bare ``ValueError`` or ``UnicodeError`` (a port out of range, a host label
    over 63 characters).
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise InvalidRequestError(f"invalid {what} {url!r}: {exc}", param=param) from None
    if parsed.scheme not in ("http", "https"):
        raise InvalidRequestError(f"{what} must be an http(s) URL, got {url!r}", param=param)
    problem = _host_problem(parsed)
    if problem is not None:
        raise InvalidRequestError(f"invalid {what} {url!r}: {problem}", param=param)
    return parsed


def _check_key(key: str) -> None:
    # The key goes into a header: anything but visible ASCII would fail deep in the HTTP stack,
    # with the whole key in the exception. Say where, never what.
    for position, char in enumerate(key, 1):
        if not (char.isascii() and char.isprintable()) or char.isspace():
            kind = (
                "a control character"
                if not char.isprintable()
                else "a character that is not visible ASCII"
            )
            raise InvalidRequestError(
                f"the API key contains {kind} at position {position} of {len(key)}: "
                "API keys are printable ASCII without spaces (check for a stray character "
                "copied with the key)",
                param="api_key",
            )


def _mask(key: str) -> str:
    return f"...{key[-4:]}" if len(key) >= 20 else "***"


@attrs.frozen
class Endpoint:
    """The API's base URL and the key sent to it (never shown in ``repr``)."""

    api_key: str = attrs.field(repr=False)
    base_url: httpx.URL
    generate_url: httpx.URL
    origin: Origin

    @classmethod
    def resolve(
        cls, api_key: str | None, base_url: str | None, *, allow_insecure_http: bool
    ) -> Endpoint:
        """The endpoint for these arguments and the environment, or :class:`InvalidRequestError`.

        ``api_key`` falls back to ``NANOBANANA_API_KEY``, ``base_url`` to
        ``NANOBANANA_BASE_URL``. Plain ``http`` is refused for a non-loopback host unless
        ``allow_insecure_http``: the key would travel in clear text.
        """
        key = api_key if api_key is not None else os.environ.get("NANOBANANA_API_KEY")
        if not key or not key.strip():
            raise InvalidRequestError(
                "no API key: pass api_key=... or set the NANOBANANA_API_KEY environment variable",
                param="api_key",
            )
        # Header injection characters are refused even at the ends, where strip() would hide
        # them; other surrounding white space is only a copy-and-paste slip.
        if any(c in key for c in "\r\n\x00"):
            raise InvalidRequestError("the API key contains control characters", param="api_key")
        key = key.strip()
        _check_key(key)
        raw_base = base_url or os.environ.get("NANOBANANA_BASE_URL") or DEFAULT_BASE_URL
        base = check_http_url(raw_base.rstrip("/"), what="base_url", param="base_url")
        if base.userinfo:
            # httpx would send them as Basic auth in place of the key, on some paths only. The
            # URL is not quoted: it holds a password.
            raise InvalidRequestError(
                f"base_url must not contain a user name or password (host {base.host}): the "
                "API key authenticates; pass it as api_key",
                param="base_url",
            )
        if base.scheme == "http" and not allow_insecure_http and not is_loopback(base.host):
            raise InvalidRequestError(
                f"refusing to send the API key over plain http to {base.host}: use https, or pass "
                "allow_insecure_http=True if this network is trusted",
                param="base_url",
            )
        return cls(
            api_key=key,
            base_url=base,
            generate_url=base.copy_with(path=base.path.rstrip("/") + GENERATE_PATH),
            origin=origin_of(base),
        )

    @property
    def masked_key(self) -> str:
        """The key as it may be shown: its last four characters at most."""
        return _mask(self.api_key)

    def is_api_origin(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the API's own origin (the only one that sees the key)."""
        return origin_of(url) == self.origin
