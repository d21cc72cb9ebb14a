"""Calling the Nano Banana API from FastAPI handlers: one shared client, errors as HTTP statuses.

Run it (any ASGI server works)::

    NANOBANANA_API_KEY=sk-... uvicorn examples.fastapi_app:app

or offline, against the emulator served by ``nanobanana emulator --port 8001``::

    NANOBANANA_BASE_URL=http://127.0.0.1:8001 NANOBANANA_API_KEY=test \
        uvicorn examples.fastapi_app:app

The pattern:

- one :class:`AsyncNanoBanana` per process, opened in the app's lifespan and closed at
  shutdown: every request shares its connection pool, retry budget and 429 cool-down (a
  client per request would open a fresh pool each time and retry blind);
- a dependency, ``Client``, hands it to handlers;
- one exception handler turns the SDK's errors into HTTP statuses, never leaking the key;
- ``POST /images`` generates one request's images, ``POST /images/batch`` streams one NDJSON
  line per job while the batch runs;
- with OpenTelemetry installed (``pip install 'nanobanana-async[otel]'`` plus the SDK and an
  exporter), each request is a SERVER span, current while it is handled, so the SDK's spans
  (a call, its attempts, a batch) nest under it and its ``traceparent`` continues the
  caller's trace. :class:`RequestSpans` is a few lines of the OpenTelemetry API; the
  ``opentelemetry-instrumentation-fastapi`` package does the same with more detail.
- under several workers (``uvicorn --workers 4``, several pods), ``NANOBANANA_LIMITS`` (a
  ``redis://...?namespace=...&max_per_second=...&max_credits=...`` URL) gives every worker's
  client the same :class:`RedisLimits`: one rate, one budget and one 429 cool-down for the
  account instead of one per process (docs/scaling.md). The budget's ledger is created once
  beforehand (``nanobanana limits create``); a worker whose lifespan cannot open the limits
  (Redis down, no ledger) does not start.

``create_app(client_factory=...)`` builds the app around another client (tests point it at
the emulator); the default client reads ``NANOBANANA_API_KEY`` (and ``NANOBANANA_BASE_URL``)
from the environment when the app starts, so importing this module needs neither.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from nanobanana_async import (
    DEFAULT_MODEL,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncNanoBanana,
    AuthenticationError,
    BudgetExceededError,
    InsufficientCreditsError,
    InvalidRequestError,
    Job,
    JobResult,
    LimitsUnavailableError,
    NanoBananaError,
    RateLimitError,
    RedisLimits,
)

__all__ = [
    "BatchRequest",
    "Client",
    "ImageRequest",
    "ImageResponse",
    "RequestSpans",
    "app",
    "create_app",
    "error_status",
    "get_client",
]

logger = logging.getLogger("examples.fastapi_app")

MAX_NUM = 10  # images per request
MAX_BATCH_JOBS = 1000  # jobs per batch request
MAX_CONCURRENCY = 32  # generate requests in flight per batch request

ClientFactory = Callable[[], AsyncNanoBanana]


# -- request and response bodies ----------------------------------------------------------------


class ImageRequest(BaseModel):
    """One generation. Model and size are checked by the SDK (its tables are the truth)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str = DEFAULT_MODEL
    image_size: str = "1:1"
    num: int = Field(default=1, ge=1, le=MAX_NUM)


class ImageResponse(BaseModel):
    urls: list[str]
    credits: int
    model: str
    image_size: str


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[ImageRequest] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    concurrency: int = Field(default=8, ge=1, le=MAX_CONCURRENCY)
    max_credits: int | None = Field(default=None, ge=0)


# -- the shared client ---------------------------------------------------------------------------


def default_client() -> AsyncNanoBanana:
    """The production client: key, base URL and shared limits (``NANOBANANA_LIMITS``, if
    set) from the environment."""
    shared = os.environ.get("NANOBANANA_LIMITS")
    return AsyncNanoBanana(limits=RedisLimits.from_url(shared) if shared else None)


async def get_client(request: Request) -> AsyncNanoBanana:
    """The dependency: the one client opened by the lifespan."""
    client: AsyncNanoBanana | None = getattr(request.app.state, "nanobanana", None)
    if client is None:
        raise RuntimeError("the NanoBanana client is not open: is the app's lifespan running?")
    return client


Client = Annotated[AsyncNanoBanana, Depends(get_client)]


# -- errors ----------------------------------------------------------------------------------


def error_status(exc: NanoBananaError) -> tuple[int, str]:
    """The HTTP status and the message to show the caller of this app for an SDK error.

    Messages say what happened without the upstream details a caller has no use for (and
    never the key: the SDK redacts it everywhere, and 401s are described, not quoted).
    """
    if isinstance(exc, InvalidRequestError):
        return 422, exc.message
    if isinstance(exc, InsufficientCreditsError):
        return 402, "the image service account is out of credits"
    if isinstance(exc, BudgetExceededError):
        return 402, "this service's image budget is spent"
    if isinstance(exc, LimitsUnavailableError):
        return 503, "the image service's shared limits are unavailable; retry later"
    if isinstance(exc, AuthenticationError):
        return 502, "the image service rejected this server's credentials"
    if isinstance(exc, RateLimitError):
        return 429, "the image service is rate limiting requests; retry later"
    if isinstance(exc, APITimeoutError):
        return 504, "the image service did not answer in time"
    if isinstance(exc, APIConnectionError):
        return 502, "the image service could not be reached"
    if isinstance(exc, APIError):
        return 502, f"the image service failed (HTTP {exc.status_code})"
    return 500, "image generation failed"


async def nanobanana_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Registered for :class:`NanoBananaError`, so it sees every SDK error."""
    if not isinstance(exc, NanoBananaError):  # pragma: no cover - registered for it only
        raise exc
    status, message = error_status(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    # The SDK's own message is safe to log: it never contains the key.
    log = logger.info if status < 500 else logger.warning
    log("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


# -- the app -----------------------------------------------------------------------------------


def _job(client: AsyncNanoBanana, body: ImageRequest) -> Job:
    return client.make_job(body.prompt, model=body.model, image_size=body.image_size, num=body.num)


def _line(result: JobResult) -> bytes:
    generation = result.generation
    error: str | None = None
    if result.error is not None:
        error = error_status(result.error)[1]
    elif result.reason is not None:
        error = result.reason
    record: dict[str, Any] = {
        "index": result.index,
        "status": result.status,
        "urls": list(generation.urls) if generation is not None else [],
        "credits": result.credits,
        "error": error,
    }
    return json.dumps(record).encode() + b"\n"


async def _stream(
    client: AsyncNanoBanana, jobs: list[Job], body: BatchRequest
) -> AsyncIterator[bytes]:
    # ``async with`` ends the batch (cancelling requests in flight) if the caller hangs up.
    async with client.batch(
        jobs, concurrency=body.concurrency, max_credits=body.max_credits
    ) as run:
        async for result in run:
            yield _line(result)


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class RequestSpans:
    """ASGI middleware: a SERVER span around each HTTP request, current while it is handled.

    The span continues the caller's trace (its ``traceparent``, read with the configured
    propagators) and everything the handler does runs under it: the SDK's spans for a call,
    its attempts and a batch become its children. OpenTelemetry API only; spans go to
    ``tracer_provider`` (default: the global one, once the application sets it).
    """

    def __init__(self, app: ASGIApp, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self.app = app
        self.tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate, trace

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(carrier)
        method = scope["method"]
        span = self.tracer.start_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        status = 500

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is not None:  # known once routed: a low-cardinality span name
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
            context.detach(token)
            span.end()


def _tracing_available() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def create_app(
    client_factory: ClientFactory | None = None,
    *,
    tracing: bool | None = None,
    tracer_provider: Any = None,
) -> FastAPI:
    """The app, around a client made by ``client_factory`` (default: from the environment).

    The factory is called once, when the app starts; the client is closed when it stops.
    ``tracing`` wraps each request in a span (:class:`RequestSpans`; default: when
    OpenTelemetry is installed), sent to ``tracer_provider`` (default: the global one). Give
    the client the same provider (``AsyncNanoBanana(tracer_provider=...)``) or set it
    globally, so that the SDK's spans land in the same trace.
    """
    factory = client_factory or default_client

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with factory() as client:
            app.state.nanobanana = client
            try:
                yield
            finally:
                del app.state.nanobanana

    app = FastAPI(title="Nano Banana images", lifespan=lifespan)
    app.add_exception_handler(NanoBananaError, nanobanana_error_handler)
    if tracing if tracing is not None else _tracing_available():
        app.add_middleware(RequestSpans, tracer_provider=tracer_provider)

    @app.post("/images")
    async def generate_image(body: ImageRequest, client: Client) -> ImageResponse:
        """Generate ``num`` images for one prompt."""
        generation = await client.generate(_job(client, body))
        return ImageResponse(
            urls=list(generation.urls),
            credits=generation.credits,
            model=generation.model,
            image_size=generation.image_size,
        )

    @app.post("/images/batch")
    async def generate_batch(body: BatchRequest, client: Client) -> StreamingResponse:
        """Run many jobs; one NDJSON line per job, sent as each job finishes.

        Every job is validated before anything is spent: one bad job refuses the request
        (422). Failures of single jobs are lines with ``"status": "failed"``.
        """
        jobs: list[Job] = []
        for index, job in enumerate(body.jobs):
            try:
                jobs.append(_job(client, job))
            except InvalidRequestError as exc:
                raise InvalidRequestError(
                    f"jobs[{index}]: {exc.message}", param=exc.param
                ) from None
        estimate = client.estimate(jobs)
        return StreamingResponse(
            _stream(client, jobs, body),
            media_type="application/x-ndjson",
            headers={"X-Credits-Estimate": str(estimate.total)},
        )

    return app


app = create_app()
