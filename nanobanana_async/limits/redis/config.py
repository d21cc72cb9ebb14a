"""Where the shared limits live and how they behave: the URL (read by :mod:`..urls`),
namespace, caps, lease, timeout, and whether a Redis that can lose a ledger is accepted."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ...errors import InvalidRequestError
from ...urls import credentials, flag, redact_url, split_options
from ...validation import positive
from ..local import check_caps
from .resp import Target

__all__ = ["DEFAULT_NAMESPACE", "RedisConfig"]

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_NAMESPACE = "nanobanana"
# A live holder renews its reservations every third of this; a dead one's expire after it.
DEFAULT_LEASE = 30.0
# Reservations of limits that are not open (no heartbeat renews them) hold this long at least.
UNRENEWED_LEASE = 600.0


def _cert_reqs(text: str) -> ssl.VerifyMode:
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    if text.lower() not in modes:
        raise ValueError(f"expected one of {', '.join(modes)}")
    return modes[text.lower()]


# What RedisLimits reads from the query string: its own options, then the connection's (the
# names redis-py and coredis use for them).
LIMITS_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "namespace": str,
    "max_per_second": float,
    "max_credits": int,
    "lease": float,
    "timeout": float,
    "allow_volatile": flag,
}
CONNECTION_OPTIONS: Mapping[str, Callable[[str], Any]] = {
    "db": int,
    "username": str,
    "password": str,
    "client_name": str,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": flag,
}


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without RedisLimits' own options, and those options; unknown ones refused."""
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in SCHEMES:
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise InvalidRequestError(
            f"RedisLimits needs a redis://, rediss:// or unix:// URL, got {shown}", param="url"
        )
    clean, options = split_options(
        url, what="limits", options=LIMITS_OPTIONS, passthrough=CONNECTION_OPTIONS
    )
    return clean, options


def _tls(options: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if "ssl_certfile" in options:
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    reqs = options.get("ssl_cert_reqs", ssl.CERT_REQUIRED)
    context.check_hostname = options.get("ssl_check_hostname", reqs != ssl.CERT_NONE)
    context.verify_mode = reqs
    return context


def _target(url: str) -> Target:
    """The connection ``url`` names (its query holds connection options only)."""
    parts = urllib.parse.urlsplit(url)
    _, options = split_options(url, what="limits", options=CONNECTION_OPTIONS)
    username, password = credentials(url)
    username = options.get("username", username) or None
    password = options.get("password", password)
    if parts.scheme == "unix":
        path = urllib.parse.unquote(parts.path)
        return Target(None, 0, path, options.get("db", 0), username, password)
    try:
        port = parts.port or 6379
    except ValueError:
        raise InvalidRequestError(
            f"the port of the limits URL {redact_url(url)} is not a number", param="url"
        ) from None
    db = options.get("db")
    if db is None:
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise InvalidRequestError(
                f"the path of the limits URL {redact_url(url)} must be a database number "
                f"(/0), got /{path}",
                param="url",
            )
        db = int(path) if path else 0
    tls = None
    if parts.scheme == "rediss":
        try:
            tls = _tls(options)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise InvalidRequestError(
                f"the TLS files of the limits URL {redact_url(url)} cannot be used: {exc}",
                param="url",
            ) from None
    return Target(
        urllib.parse.unquote(parts.hostname or "localhost"),
        port,
        None,
        db,
        username,
        password,
        tls,
        options.get("client_name"),
    )


def _seconds(name: str, value: float) -> float:
    return float(positive(value, name, unit="number of seconds"))


@attrs.frozen
class RedisConfig:
    """A validated RedisLimits configuration."""

    url: str  # for messages: no password, no query
    target: Target = attrs.field(repr=False)
    namespace: str
    max_per_second: float | None
    max_credits: int | None
    lease: float
    timeout: float
    allow_volatile: bool

    @property
    def password(self) -> str | None:
        """The password (redacted from every message), if any."""
        return self.target.password

    @classmethod
    def build(
        cls,
        url: str,
        *,
        namespace: str,
        max_per_second: float | None,
        max_credits: int | None,
        lease: float,
        timeout: float,
        allow_volatile: bool,
    ) -> RedisConfig:
        clean, options = split_url(url)
        if options:
            raise InvalidRequestError(
                f"the options {', '.join(sorted(options))} of the limits URL are read by "
                "RedisLimits.from_url(url): RedisLimits(url) takes them as arguments",
                param="url",
            )
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in "{}"):
            raise InvalidRequestError(
                f"namespace must be a non-empty string without braces, got {namespace!r}",
                param="namespace",
            )
        check_caps(max_per_second, max_credits)
        if not isinstance(allow_volatile, bool):
            raise InvalidRequestError(
                f"allow_volatile must be True or False, got {allow_volatile!r}",
                param="allow_volatile",
            )
        target = _target(clean)
        shown = urllib.parse.urlsplit(clean)._replace(query="")
        return cls(
            redact_url(urllib.parse.urlunsplit(shown)),
            target,
            namespace,
            max_per_second,
            max_credits,
            _seconds("lease", lease),
            _seconds("timeout", timeout),
            allow_volatile,
        )
