"""AsyncNanoBanana: transport, authentication, generate, download, estimate."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pathlib
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import attrs
import httpx

from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InvalidRequestError,
    MalformedResponseError,
    NanoBananaError,
    error_for_status,
    parse_generate_response,
)
from .models import DEFAULT_MODEL, Generation, Job
from .pricing import CreditEstimate, PricingTable, as_job, resolve_pricing
from .retry import CallStats, Cooldown, RetryBudget, RetryPolicy, call_with_retries
from .transport import (
    UNBOUNDED_LIMITS,
    BodyTooLarge,
    FastTransport,
    SDKAsyncClient,
    declared_length,
    read_capped,
)

if TYPE_CHECKING:
    from .batch import BatchReport, BatchRun, JobInput, _Background

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "AsyncNanoBanana"]

logger = logging.getLogger("nanobanana_async")

DEFAULT_BASE_URL = "https://api.nanobananaapi.dev"
# Generation takes tens of seconds, so reads get a long timeout; a connect that takes more than
# a few seconds is a dead host. Waiting for a pooled connection is not a fault of the server and
# never times out: the batch runner bounds how many requests wait.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=180.0, write=30.0, pool=None)
GENERATE_PATH = "/v1/images/generate"
USER_AGENT = f"nanobanana-async/{__version__}"
MAX_RESPONSE_BYTES = 1 << 20
MAX_DOWNLOAD_BYTES = 256 << 20
_CHUNK = 64 << 10


def _mask(key: str) -> str:
    return f"...{key[-4:]}" if len(key) >= 20 else "***"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, url.port or default_port)


def _too_large(status_code: int, headers: Mapping[str, str], limit: int) -> APIError:
    # An error status still classifies the failure (a proxy's huge 502 page is a retryable
    # server error); only a success status with an oversized body is malformed.
    detail = f"with a body larger than the {limit}-byte cap (not read)"
    if status_code >= 400:
        return error_for_status(status_code, headers, detail)
    return MalformedResponseError(
        f"response refused: HTTP {status_code} {detail}", status_code=status_code
    )


def _connection_error(exc: httpx.HTTPError, target: str, *, sent: bool) -> APIConnectionError:
    """Map an httpx failure, saying whether the server may have acted on the request."""
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    detail = str(exc) or type(exc).__name__
    if not sent:
        return cls(f"could not reach {target}: {detail}", may_have_been_charged=False)
    return cls(
        f"the connection to {target} failed after the request was sent ({detail}); the server "
        "may have generated and charged for it, so it was not retried. Pass "
        "retry_ambiguous=True to retry such failures (at the risk of paying twice).",
        may_have_been_charged=True,
    )


def _request_was_sent(exc: httpx.HTTPError) -> bool:
    # Connect and pool failures happen before a byte of the request leaves; a failed write
    # leaves the server an incomplete request it cannot act on. Anything later (read timeout,
    # dropped connection) may come after the server did the work.
    return not isinstance(
        exc,
        httpx.ConnectError
        | httpx.ConnectTimeout
        | httpx.PoolTimeout
        | httpx.WriteError
        | httpx.WriteTimeout
        | httpx.LocalProtocolError
        | httpx.UnsupportedProtocol,
    )


class AsyncNanoBanana:
    """Async client for the Nano Banana image API.

    ``api_key`` falls back to ``NANOBANANA_API_KEY`` and ``base_url`` to
    ``NANOBANANA_BASE_URL``. Use it as ``async with AsyncNanoBanana() as client:`` or call
    :meth:`aclose`; a caller's ``http_client`` is used as is and never closed. ``transport``
    plugs an httpx transport (for example ``Emulator().transport()``) into the client's own
    connection pool. Plain ``http`` is refused for a non-loopback ``base_url`` unless
    ``allow_insecure_http`` is set: the key would travel in clear text.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        pricing: PricingTable | Mapping[str, int] | str | os.PathLike[str] | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_ambiguous: bool | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("NANOBANANA_API_KEY")
        if not key or not key.strip():
            raise InvalidRequestError(
                "no API key: pass api_key=... or set the NANOBANANA_API_KEY environment variable",
                param="api_key",
            )
        if any(c in key for c in "\r\n\x00"):
            raise InvalidRequestError("the API key contains control characters", param="api_key")
        self._api_key = key.strip()
        raw_base = base_url or os.environ.get("NANOBANANA_BASE_URL") or DEFAULT_BASE_URL
        try:
            base = httpx.URL(raw_base.rstrip("/"))
        except httpx.InvalidURL as exc:
            raise InvalidRequestError(
                f"invalid base_url {raw_base!r}: {exc}", param="base_url"
            ) from None
        if base.scheme not in ("http", "https") or not base.host:
            raise InvalidRequestError(
                f"base_url must be an http(s) URL with a host, got {raw_base!r}", param="base_url"
            )
        if base.scheme == "http" and not allow_insecure_http and not _is_loopback(base.host):
            raise InvalidRequestError(
                f"refusing to send the API key over plain http to {base.host}: use https, or pass "
                "allow_insecure_http=True if this network is trusted",
                param="base_url",
            )
        if http_client is not None and transport is not None:
            raise InvalidRequestError(
                "pass either http_client or transport, not both", param="transport"
            )
        self._base_url = base
        self._origin = _origin(base)
        self._generate_url = base.copy_with(path=base.path.rstrip("/") + GENERATE_PATH)
        # A plain number bounds connect, read and write; waiting for a pooled connection
        # still never times out (see DEFAULT_TIMEOUT).
        self._timeout = (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, pool=None)
        )
        self._policy = RetryPolicy()
        self._policy = self.policy_for(max_retries, retry_ambiguous, base=retry_policy)
        self._pricing = resolve_pricing(pricing)
        self._budget = RetryBudget()
        self._cooldown = Cooldown()
        self._user_client = http_client
        self._transport = transport
        self._own_client: httpx.AsyncClient | None = None
        # Generate requests skip httpx's Request/Response machinery when FastTransport can post
        # through aiohttp: at batch concurrency that machinery was most of the client's CPU.
        self._fast_transport: FastTransport | None = None
        if http_client is None:
            # FastTransport loads its TLS context once per process in a worker thread, so
            # neither this constructor nor the event loop pays for it.
            if transport is None and _env_proxy_applies(self._generate_url):
                # httpx honours HTTP(S)_PROXY / NO_PROXY only on its own transports.
                self._own_client = SDKAsyncClient(
                    limits=UNBOUNDED_LIMITS,
                    timeout=self._timeout,
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                )
            else:
                chosen = transport or FastTransport()
                if isinstance(chosen, FastTransport):
                    self._fast_transport = chosen
                self._own_client = SDKAsyncClient(
                    transport=chosen,
                    timeout=self._timeout,
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                )
        self._generate_target = str(self._generate_url)
        self._timeout_spec: dict[str, float | None] = self._timeout.as_dict()
        self._closed = False
        self._batches: set[_Background] = set()
        self._auth_headers = {"Authorization": f"Bearer {self._api_key}"}

    # -- lifecycle -------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"AsyncNanoBanana(base_url={str(self._base_url)!r}, api_key={_mask(self._api_key)!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections this client opened (never a caller's ``http_client``).

        Batches of this client still running (a loop left with ``break``, a consumer that was
        cancelled) are cancelled and awaited first: closing the pool under them would strand
        the connections they were still opening.
        """
        self._closed = True
        batches = list(self._batches)
        for batch in batches:
            batch.scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            for batch in batches:
                await batch.finished.wait()
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.aclose()

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return str(self._base_url)

    @property
    def pricing(self) -> PricingTable:
        """The pricing table used for estimates and per-job credits."""
        return self._pricing

    @property
    def retry_policy(self) -> RetryPolicy:
        """The client's default retry policy."""
        return self._policy

    @property
    def retry_budget(self) -> RetryBudget:
        """The retry budget shared by every call of this client."""
        return self._budget

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise NanoBananaError("this AsyncNanoBanana client is closed; create a new one")
        if self._user_client is not None:
            return self._user_client
        # Connections are bounded by the callers (the batch runner's concurrency), not by the
        # pool: FastTransport never makes a request wait for a pooled connection.
        assert self._own_client is not None
        return self._own_client

    # -- generate --------------------------------------------------------------------------

    def make_job(
        self,
        prompt: Job | str,
        *,
        model: str = DEFAULT_MODEL,
        image_size: str = "1:1",
        num: int = 1,
    ) -> Job:
        """Validate and build a :class:`Job` under this client's pricing table."""
        if isinstance(prompt, Job):
            _refuse_overrides(prompt, model=model, image_size=image_size, num=num)
            job = prompt
        elif isinstance(prompt, str):
            job = Job(prompt, model, image_size, num, pricing=self._pricing)
        else:
            job = as_job(prompt)
        self._pricing.credits(job)  # a model the table cannot price is refused before sending
        return job

    async def generate(
        self,
        prompt: Job | str,
        *,
        model: str = DEFAULT_MODEL,
        image_size: str = "1:1",
        num: int = 1,
        max_retries: int | None = None,
        retry_ambiguous: bool | None = None,
    ) -> Generation:
        """Generate ``num`` images for ``prompt`` (a string or a :class:`Job`).

        Invalid input raises :class:`InvalidRequestError` before anything is sent. Retryable
        failures are retried per the client's policy (``max_retries`` and ``retry_ambiguous``
        override it for this call) with one ``Idempotency-Key`` for every attempt.
        """
        job = self.make_job(prompt, model=model, image_size=image_size, num=num)
        return await self._generate(job, self.policy_for(max_retries, retry_ambiguous), CallStats())

    def policy_for(
        self,
        max_retries: int | None,
        retry_ambiguous: bool | None,
        *,
        base: RetryPolicy | None = None,
    ) -> RetryPolicy:
        """The client's policy (or ``base``) with per-call overrides applied."""
        policy = base or self._policy
        changes: dict[str, Any] = {}
        if max_retries is not None:
            changes["max_retries"] = max_retries
        if retry_ambiguous is not None:
            changes["retry_ambiguous"] = retry_ambiguous
        return attrs.evolve(policy, **changes) if changes else policy

    async def _generate(
        self,
        job: Job,
        policy: RetryPolicy,
        stats: CallStats,
        before_attempt: Callable[[], Awaitable[None]] | None = None,
    ) -> Generation:
        started = time.perf_counter()
        headers = {
            **self._auth_headers,
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Type": "application/json",
        }
        body = _json_bytes(job.to_body())  # once per call, the same bytes on every attempt

        async def attempt() -> tuple[str, ...]:
            return await self._post_generate(body, headers)

        urls = await call_with_retries(
            attempt,
            policy=policy,
            budget=self._budget,
            cooldown=self._cooldown,
            stats=stats,
            before_attempt=before_attempt,
            what=f"generate ({job.model}, {job.num} image(s))",
        )
        elapsed = time.perf_counter() - started
        logger.debug("generated %d image(s) with %s in %.3fs", len(urls), job.model, elapsed)
        return Generation(
            urls=urls,
            model=job.model,
            image_size=job.image_size,
            num=job.num,
            credits=self._pricing.credits(job),
            elapsed=elapsed,
        )

    async def _post_generate(self, body: bytes, headers: dict[str, str]) -> tuple[str, ...]:
        http = self._http()
        target = self._generate_target
        try:
            fast = self._fast_transport
            if fast is not None and fast.can_post_directly():
                status, response_headers, content = await fast.post_directly(
                    target,
                    body,
                    {**headers, **_DIRECT_HEADERS},
                    self._timeout_spec,
                    MAX_RESPONSE_BYTES,
                )
            else:
                request = http.build_request(
                    "POST", self._generate_url, content=body, headers=headers, timeout=self._timeout
                )
                response = await http.send(request, stream=True)
                try:
                    content = await read_capped(
                        response.aiter_bytes(),
                        declared_length(response.headers.get("content-length")),
                        MAX_RESPONSE_BYTES,
                        response.status_code,
                        response.headers,
                    )
                finally:
                    await response.aclose()
                status, response_headers = response.status_code, response.headers
        except httpx.HTTPError as exc:
            raise _connection_error(exc, target, sent=_request_was_sent(exc)) from None
        except BodyTooLarge as exc:
            raise _too_large(exc.status_code, exc.headers, MAX_RESPONSE_BYTES) from None
        logger.debug("POST %s -> HTTP %d", target, status)
        return parse_generate_response(status, content, response_headers, secret=self._api_key)

    # -- download --------------------------------------------------------------------------

    def _headers_for(self, url: httpx.URL) -> dict[str, str]:
        # The key is for the API only: image hosts on another origin never see it.
        return self._auth_headers if _origin(url) == self._origin else {}

    async def download(
        self, url: str, path: str | os.PathLike[str], *, max_bytes: int = MAX_DOWNLOAD_BYTES
    ) -> pathlib.Path:
        """Stream the image at ``url`` to ``path`` atomically and return the path.

        The file appears complete or not at all: bytes go to a temporary file beside it,
        renamed into place at the end and removed on any failure or cancellation.
        ``Authorization`` is sent only when ``url`` is on the API's own origin.
        """
        try:
            target_url = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidRequestError(f"invalid image URL {url!r}: {exc}", param="url") from None
        if target_url.scheme not in ("http", "https"):
            raise InvalidRequestError(f"image URL must be http(s), got {url!r}", param="url")
        dest = pathlib.Path(path)
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        http = self._http()
        request = http.build_request(
            "GET", target_url, headers=self._headers_for(target_url), timeout=self._timeout
        )
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            try:
                response = await http.send(request, stream=True, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise _connection_error(
                    exc, str(target_url.copy_with(query=None)), sent=False
                ) from None
            try:
                if response.status_code >= 400:
                    raise _download_error(response, url)
                await self._stream_to(response, tmp, max_bytes)
            except httpx.HTTPError as exc:
                raise _connection_error(
                    exc, str(target_url.copy_with(query=None)), sent=False
                ) from None
            finally:
                await response.aclose()
            os.replace(tmp, dest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(tmp).unlink(missing_ok=True)
            raise
        logger.debug("downloaded %s to %s", target_url.copy_with(query=None), dest)
        return dest

    @staticmethod
    async def _stream_to(response: httpx.Response, tmp: pathlib.Path, max_bytes: int) -> None:
        declared = declared_length(response.headers.get("content-length"))
        if declared is not None and declared > max_bytes:
            raise MalformedResponseError(
                f"image of {declared} bytes refused: larger than the {max_bytes}-byte cap",
                status_code=response.status_code,
            )
        size = 0
        async with await anyio.open_file(tmp, "wb") as fh:
            async for chunk in response.aiter_bytes(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise MalformedResponseError(
                        f"image refused: larger than the {max_bytes}-byte cap",
                        status_code=response.status_code,
                    )
                await fh.write(chunk)

    # -- estimates and batches ---------------------------------------------------------------

    def estimate(self, jobs: Iterable[Job | str]) -> CreditEstimate:
        """What ``jobs`` would cost under this client's pricing table. Sends nothing."""
        return self._pricing.estimate(jobs)

    def batch(
        self,
        jobs: JobInput,
        *,
        concurrency: int = 8,
        max_credits: int | None = None,
        max_per_second: float | None = None,
        journal: str | os.PathLike[str] | None = None,
        download_dir: str | os.PathLike[str] | None = None,
        ordered: bool = False,
        max_retries: int | None = None,
        retry_ambiguous: bool | None = None,
    ) -> BatchRun:
        """Run many jobs; an async iterator of :class:`JobResult`, one per job, as they finish.

        ``jobs`` is an iterable or async iterable of :class:`Job` or prompt strings, consumed
        lazily. See :class:`~nanobanana_async.batch.BatchOptions` for what each option does.
        Breaking out of the loop cancels the requests in flight.
        """
        from .batch import BatchOptions, BatchRun

        options = BatchOptions(
            concurrency=concurrency,
            max_credits=max_credits,
            max_per_second=max_per_second,
            journal=journal,
            download_dir=download_dir,
            ordered=ordered,
            max_retries=max_retries,
            retry_ambiguous=retry_ambiguous,
        )
        return BatchRun(self, jobs, options)

    async def run_batch(
        self,
        jobs: JobInput,
        *,
        concurrency: int = 8,
        max_credits: int | None = None,
        max_per_second: float | None = None,
        journal: str | os.PathLike[str] | None = None,
        download_dir: str | os.PathLike[str] | None = None,
        ordered: bool = False,
        max_retries: int | None = None,
        retry_ambiguous: bool | None = None,
    ) -> BatchReport:
        """Run many jobs to the end and return the :class:`BatchReport` (same options as
        :meth:`batch`)."""
        from .batch import run_to_report

        run = self.batch(
            jobs,
            concurrency=concurrency,
            max_credits=max_credits,
            max_per_second=max_per_second,
            journal=journal,
            download_dir=download_dir,
            ordered=ordered,
            max_retries=max_retries,
            retry_ambiguous=retry_ambiguous,
        )
        return await run_to_report(run)


def _env_proxy_applies(url: httpx.URL) -> bool:
    """Whether ``url`` should go through a proxy named in the environment.

    Never for a loopback host: no proxy can reach this machine's loopback (an emulator).
    """
    if _is_loopback(url.host):
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.host)


# What the SDK's own httpx client sends besides, minus compression: the direct path reads the
# body as is (a small JSON object is not worth compressing).
_DIRECT_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "*/*",
    "Accept-Encoding": "identity",
}


def _json_bytes(body: dict[str, Any]) -> bytes:
    # Compact UTF-8, as httpx encodes json=.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _refuse_overrides(job: Job, **fields: object) -> None:
    # generate(Job(...), model=...) would otherwise silently send the job's own model.
    defaults = {"model": DEFAULT_MODEL, "image_size": "1:1", "num": 1}
    clashes = [
        name
        for name, value in fields.items()
        if value != defaults[name] and value != getattr(job, name)
    ]
    if clashes:
        raise InvalidRequestError(
            f"{', '.join(clashes)} given together with a Job that sets its own: set them on the "
            "Job (attrs.evolve(job, ...)) or pass a prompt string",
            param=clashes[0],
        )


def _download_error(response: httpx.Response, url: str) -> APIError:
    return APIError(
        f"downloading {httpx.URL(url).copy_with(query=None)} failed",
        status_code=response.status_code,
    )
