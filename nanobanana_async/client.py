"""AsyncNanoBanana: the public client, and the door to everything the SDK does.

Construction (endpoint, transport, timeouts, pricing, limits, telemetry), lifecycle, generate,
download, estimate, and the batch and worker entry points. It is longer than most modules
because it is the one public class and its signatures are the API; the work is done elsewhere:
requests in generate_request, retries in retry, batches in batch/, files in download.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, Unpack

import anyio
import attrs
import httpx

from ._http.fast import UNBOUNDED_LIMITS, FastTransport
from ._http.httpx_client import SDKAsyncClient
from .batch import (
    BatchKWs,
    BatchOptions,
    BatchRegistry,
    BatchReport,
    BatchRun,
    JobInput,
    JobStore,
    WorkerKWs,
    options_from,
    run_to_report,
)
from .download import MAX_DOWNLOAD_BYTES, download_image
from .endpoint import DEFAULT_BASE_URL, USER_AGENT, Endpoint, env_proxy_applies, user_agent_for
from .errors import (
    InvalidRequestError,
    NanoBananaError,
)
from .generate_request import (
    GenerateRequests,
    checked_timeout,
    json_bytes,
    new_idempotency_key,
)
from .limits import Limits, LocalLimits
from .models import DEFAULT_MODEL, Generation, Job
from .pricing import CreditEstimate, PricingTable, as_job, resolve_pricing
from .retry import (
    AttemptHooks,
    CallStats,
    RetryBudget,
    RetryPolicy,
    call_with_retries,
)
from .telemetry import Hooks, Telemetry

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "AsyncNanoBanana"]

logger = logging.getLogger("nanobanana_async")

# Generation takes tens of seconds, so reads get a long timeout; a connect that takes more than
# a few seconds is a dead host. Waiting for a pooled connection is not a fault of the server and
# never times out: the batch runner bounds how many requests wait.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=180.0, write=30.0, pool=None)
_CLOSE_TIMEOUT = 5.0  # seconds aclose() may take to close connections the caller cannot reach


class AsyncNanoBanana:
    """Async client for the Nano Banana image API.

    ``api_key`` falls back to ``NANOBANANA_API_KEY`` and ``base_url`` to
    ``NANOBANANA_BASE_URL``. Use it as ``async with AsyncNanoBanana() as client:`` or call
    :meth:`aclose`; a caller's ``http_client`` is used as is and never closed. ``transport``
    plugs an httpx transport (for example ``Emulator().transport()``) into the client's own
    connection pool. Plain ``http`` is refused for a non-loopback ``base_url`` unless
    ``allow_insecure_http`` is set: the key would travel in clear text. ``limits`` are
    consulted on every attempt of every call (cool-down, request starts, credits):
    :class:`LocalLimits` of this client by default, or :class:`RedisLimits` shared by every
    process on one namespace (opened and closed with the client).

    :meth:`with_options` gives a copy with another timeout or retry policy that shares this
    client's connection pool and limits. A caller's ``http_client`` still names the SDK in
    ``User-Agent`` (``nanobanana-async/<version>``) unless its headers name their own.

    ``hooks`` (:class:`Hooks`) are called before each attempt, after each response, on each
    retry and on each job result of a batch. With OpenTelemetry (extra ``otel``), every call
    is a span with a child span per attempt and ``traceparent`` goes out on every request;
    ``tracer_provider`` / ``meter_provider`` default to the global providers, from the moment
    the application configures them (until then the SDK does nothing for OpenTelemetry).
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
        limits: Limits | None = None,
        hooks: Hooks | None = None,
        tracer_provider: object | None = None,
        meter_provider: object | None = None,
    ) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidRequestError(
                "limits must be a LocalLimits, a RedisLimits or another Limits, "
                f"got {type(limits).__name__}",
                param="limits",
            )
        endpoint = Endpoint.resolve(api_key, base_url, allow_insecure_http=allow_insecure_http)
        self._endpoint = endpoint
        self._api_key = endpoint.api_key
        if http_client is not None and transport is not None:
            raise InvalidRequestError(
                "pass either http_client or transport, not both", param="transport"
            )
        self._generate_url = endpoint.generate_url
        # A plain number bounds connect, read and write; waiting for a pooled connection
        # still never times out (see DEFAULT_TIMEOUT).
        self._timeout = checked_timeout(timeout)
        self._policy = RetryPolicy()
        self._policy = self._policy_for(max_retries, retry_ambiguous, base=retry_policy)
        self._pricing = resolve_pricing(pricing)
        self._budget = RetryBudget()
        self._limits: Limits = limits if limits is not None else LocalLimits()
        self._user_client = http_client
        self._transport = transport
        self._own_client: httpx.AsyncClient | None = None
        # Generate requests skip httpx's Request/Response machinery when FastTransport can post
        # through its h11 pool: at batch concurrency that machinery was most of the client's CPU.
        self._fast_transport: FastTransport | None = None
        if http_client is None:
            # FastTransport loads its TLS context once per process in a worker thread, so
            # neither this constructor nor the event loop pays for it.
            if transport is None and env_proxy_applies(self._generate_url):
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
        # A caller's transport= inside the SDK's own client is handed generate requests
        # directly; FastTransport has its own direct path (see GenerateRequests).
        light = transport if transport is not None and self._fast_transport is None else None
        self._requests = GenerateRequests(
            self._generate_url,
            self._timeout,
            self._api_key,
            fast=self._fast_transport,
            light=light if self._own_client is not None else None,
            client_headers=self._own_client.headers if self._own_client else httpx.Headers(),
        )
        self._closed = False
        self._transport_ready = self._fast_transport is None
        # Its batches, and the task group its async with owns (copies tell it of theirs).
        self._batches = BatchRegistry()
        # with_options copies share what this client owns.
        self._root = self
        self._auth_headers = {"Authorization": f"Bearer {self._api_key}"}
        if hooks is not None and not isinstance(hooks, Hooks):
            raise InvalidRequestError(
                f"hooks must be a nanobanana_async.Hooks, got {type(hooks).__name__}",
                param="hooks",
            )
        self._telemetry = Telemetry(
            self._generate_url,
            hooks=hooks,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"AsyncNanoBanana(base_url={self.base_url!r}, api_key={self._endpoint.masked_key!r})"

    async def __aenter__(self) -> Self:
        """Open the client: its limits, and the task group where batches iterated without an
        ``async with`` of their own run (left, after they were stopped, by ``__aexit__``)."""
        await self._batches.open()
        if self._root is self:  # a copy's limits are its original's, opened and closed there
            try:
                await self._limits.open()
            except BaseException:
                await self._batches.leave()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            await self._batches.leave()

    async def aclose(self) -> None:
        """Close the connections this client opened (never a caller's ``http_client``).

        Batches of this client still running (a loop left with ``break``, a consumer that was
        cancelled) are cancelled and awaited first: closing the pool under them would strand
        the connections they were still opening. A copy from :meth:`with_options` closes only
        its own batches: the pool and the limits are its original's.
        """
        self._closed = True
        await self._batches.close()  # a copy's batches too: each copy's registry tells this one
        if self._root is not self:
            return
        client, self._own_client = self._own_client, None
        try:
            if client is not None:
                # Finished even when the caller is cancelled meanwhile (a task group failing
                # around it): the pool is no longer reachable, so what it held would leak.
                deadline = anyio.current_time() + _CLOSE_TIMEOUT
                with anyio.CancelScope(shield=True, deadline=deadline):
                    await client.aclose()
        finally:
            await self._limits.aclose()

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return str(self._endpoint.base_url)

    @property
    def pricing(self) -> PricingTable:
        """The pricing table used for estimates and per-job credits."""
        return self._pricing

    @property
    def retry_policy(self) -> RetryPolicy:
        """The client's default retry policy."""
        return self._policy

    @property
    def limits(self) -> Limits:
        """The limits every attempt of this client is admitted and settled by."""
        return self._limits

    @property
    def retry_budget(self) -> RetryBudget:
        """The retry budget shared by every call of this client."""
        return self._budget

    def with_options(
        self,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        retry_ambiguous: bool | None = None,
    ) -> Self:
        """A copy of this client with another ``timeout`` or retry policy (as openai-python's
        ``with_options``); what is not given stays as it is here.

        The copy shares this client's connection pool, limits (rate, credit budget,
        cool-down), retry budget, pricing, hooks and telemetry. Closing the copy (or leaving
        its ``async with``) stops its own batches and closes nothing shared; closing this
        client stops the copy's batches too, and the copy can send no more.
        """
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._closed = False
        copy._batches = BatchRegistry(parent=self._batches)
        if timeout is not None:
            copy._timeout = checked_timeout(timeout)
            copy._requests = self._requests.with_timeout(copy._timeout)
        copy._policy = self._policy_for(max_retries, retry_ambiguous)
        return copy

    def _http(self) -> httpx.AsyncClient:
        if self._closed or self._root._closed:
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
        timeout: float | httpx.Timeout | None = None,
    ) -> Generation:
        """Generate ``num`` images for ``prompt`` (a string or a :class:`Job`).

        Invalid input raises :class:`InvalidRequestError` before anything is sent. Retryable
        failures are retried per the client's policy (``max_retries`` and ``retry_ambiguous``
        override it for this call) with one ``Idempotency-Key`` for every attempt.
        ``timeout`` replaces the client's for each attempt of this call.
        """
        job = self.make_job(prompt, model=model, image_size=image_size, num=num)
        return await self._send_job(
            job,
            self._policy_for(max_retries, retry_ambiguous),
            CallStats(),
            timeout=None if timeout is None else checked_timeout(timeout),
        )

    def _policy_for(
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

    async def _ready(self) -> None:
        """Raise now if no request could be admitted: the client's limits cannot be consulted
        (shared limits unreachable, or refusing a budget). A batch asks once, before its first
        job, so that it fails once instead of once per job."""
        check = getattr(self._limits, "check", None)  # limits that can be unavailable have one
        if check is not None:
            await check()

    async def _send_job(
        self,
        job: Job,
        policy: RetryPolicy,
        stats: CallStats,
        hooks: AttemptHooks | None = None,
        *,
        idempotency_key: str | None = None,
        timeout: httpx.Timeout | None = None,
        limits: Limits | None = None,
    ) -> Generation:
        """Generate a validated ``job`` under ``policy`` (the batch runner's way in, through
        :class:`_Sender`).

        ``stats`` counts the attempts; ``hooks`` are called around each one. Every attempt
        carries ``idempotency_key`` (a job store keeps one per job), else a fresh one, and
        ``timeout`` if given (else the client's), and is admitted and settled by ``limits``
        (a batch's caps over this client's), else by the client's own.
        """
        started = time.perf_counter()
        idempotency_key = idempotency_key or new_idempotency_key()
        headers = {
            **self._auth_headers,
            "Idempotency-Key": idempotency_key,
            "Content-Type": "application/json",
        }
        body = json_bytes(job.to_body())  # once per call, the same bytes on every attempt
        price = self._pricing[job.model]
        # Spans, metrics and hooks (None when nothing listens: then nothing else runs for them).
        call = self._telemetry.start_call(job, price * job.num, idempotency_key, started)

        if not self._transport_ready and self._fast_transport is not None:
            # Before the first admission: a start slot must not be spent on one-time setup.
            await self._fast_transport.prepare()
            self._transport_ready = True

        requests = self._requests if timeout is None else self._requests.with_timeout(timeout)

        async def post() -> tuple[str, ...]:
            return await requests.post(self._http(), body, headers, call)

        def charged(urls: tuple[str, ...]) -> int:
            # Credits are charged per image generated: a partial answer costs what it returned.
            return price * min(len(urls), job.num)

        try:
            urls = await call_with_retries(
                post if call is None else functools.partial(call.attempt, post, headers),
                policy=policy,
                budget=self._budget,
                limits=self._limits if limits is None else limits,
                stats=stats,
                hooks=hooks,
                what=lambda: f"generate ({job.model}, {job.num} image(s))",
                cost=price * job.num,
                credits=charged,
                on_cooldown=None if call is None else call.cooled_down,
            )
        except BaseException as exc:
            if call is not None:
                call.failed(exc)
            raise
        elapsed = time.perf_counter() - started
        logger.debug("generated %d image(s) with %s in %.3fs", len(urls), job.model, elapsed)
        generation = Generation(
            urls=urls,
            model=job.model,
            image_size=job.image_size,
            num=job.num,
            credits=charged(urls),
            elapsed=elapsed,
        )
        if call is not None:
            call.succeeded(generation)
        return generation

    # -- download --------------------------------------------------------------------------

    def _headers_for(self, url: httpx.URL) -> dict[str, str]:
        # The key is for the API only: image hosts on another origin never see it.
        named = user_agent_for(self._http().headers)
        if self._endpoint.is_api_origin(url):
            return {**self._auth_headers, **named} if named else self._auth_headers
        return named

    async def download(
        self, url: str, path: str | os.PathLike[str], *, max_bytes: int = MAX_DOWNLOAD_BYTES
    ) -> pathlib.Path:
        """Stream the image at ``url`` to ``path`` atomically and return the path.

        The file appears complete or not at all: bytes go to a temporary file beside it,
        renamed into place at the end and removed on any failure or cancellation.
        ``Authorization`` is sent only when ``url`` is on the API's own origin.
        """
        return await download_image(
            self._http(),
            url,
            pathlib.Path(path),
            headers_for=self._headers_for,
            timeout=self._timeout,
            max_bytes=max_bytes,
        )

    # -- estimates and batches ---------------------------------------------------------------

    def estimate(self, jobs: Iterable[Job | str]) -> CreditEstimate:
        """What ``jobs`` would cost under this client's pricing table. Sends nothing."""
        return self._pricing.estimate(jobs)

    def batch(self, jobs: JobInput, **options: Unpack[BatchKWs]) -> BatchRun:
        """Run many jobs; an async iterator of :class:`JobResult`, one per job, as they finish.

        ``jobs`` is an iterable or async iterable of :class:`Job` or prompt strings, consumed
        lazily. The options (``concurrency=8``, ``max_credits``, ``max_per_second``,
        ``journal``, ``download_dir``, ``ordered=False``, ``max_retries``,
        ``retry_ambiguous``) are :class:`~nanobanana_async.batch.options.BatchOptions`'s.
        ``journal`` is a JSONL path, ``"sqlite:///run.db"``, ``"postgresql://..."`` or a job
        store. Breaking out of the loop cancels the requests in flight.
        """
        return BatchRun(
            _Sender(self),
            jobs,
            options_from(options, BatchKWs, "batch"),
            self._batches,
            telemetry=self._telemetry,
        )

    async def run_batch(self, jobs: JobInput, **options: Unpack[BatchKWs]) -> BatchReport:
        """Run many jobs to the end and return the :class:`BatchReport` (same options as
        :meth:`batch`)."""
        return await run_to_report(
            BatchRun(
                _Sender(self),
                jobs,
                options_from(options, BatchKWs, "run_batch"),
                self._batches,
                telemetry=self._telemetry,
            )
        )

    def worker(
        self, store: str | os.PathLike[str] | JobStore, **options: Unpack[WorkerKWs]
    ) -> BatchRun:
        """Work through the pending jobs of ``store`` (``"sqlite:///jobs.db"``,
        ``"postgresql://..."`` or a store object); an async iterator of :class:`JobResult`.

        Jobs are claimed a chunk at a time with a lease, recorded ``sending`` before each
        request and finished in the store, so workers in other processes and on other
        machines share the store without sending a job twice. Ends when no job is pending
        (``follow=True``: keeps polling every ``poll_interval=1.0`` seconds until cancelled).
        The other options are :meth:`batch`'s, less ``journal`` and ``ordered``.
        """
        return self._worker(options_from(options, WorkerKWs, "worker", journal=store))

    async def run_worker(
        self, store: str | os.PathLike[str] | JobStore, **options: Unpack[WorkerKWs]
    ) -> BatchReport:
        """Run :meth:`worker` to the end and return this worker's :class:`BatchReport`."""
        return await run_to_report(
            self._worker(options_from(options, WorkerKWs, "run_worker", journal=store))
        )

    def _worker(self, options: BatchOptions) -> BatchRun:
        return BatchRun(_Sender(self), None, options, self._batches, telemetry=self._telemetry)


class _Sender:
    """A client as its batches see it (:class:`~nanobanana_async.batch.sender.JobSender`): the
    runner's way to the client's plumbing, which is not part of the client's public surface."""

    __slots__ = ("_client",)

    def __init__(self, client: AsyncNanoBanana) -> None:
        self._client = client

    @property
    def pricing(self) -> PricingTable:
        return self._client._pricing

    @property
    def limits(self) -> Limits:
        return self._client._limits

    def policy(self, max_retries: int | None, retry_ambiguous: bool | None) -> RetryPolicy:
        return self._client._policy_for(max_retries, retry_ambiguous)

    async def ready(self) -> None:
        await self._client._ready()

    async def send(
        self,
        job: Job,
        policy: RetryPolicy,
        stats: CallStats,
        hooks: AttemptHooks | None = None,
        *,
        idempotency_key: str | None = None,
        limits: Limits | None = None,
    ) -> Generation:
        return await self._client._send_job(
            job, policy, stats, hooks, idempotency_key=idempotency_key, limits=limits
        )

    async def download(self, url: str, path: str | os.PathLike[str]) -> pathlib.Path:
        return await self._client.download(url, path)


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
