"""Property-based tests: whatever users pass in and whatever the server sends back, the SDK
either returns a valid ``Generation`` or raises a ``NanoBananaError``, never anything else, and
a batch never crashes.

Inputs are any text (surrogates and NUL included), any model, size and number, and wrong
types. Responses are arbitrary bytes, arbitrary JSON, documented shapes with wrong types,
deeply nested JSON, any status and any ``Retry-After``. Responses larger than the cap are
refused without being read into memory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanobanana_async import (
    BASE_SIZES,
    DEFAULT_PRICING,
    EXTENDED_SIZES,
    MODELS,
    AsyncNanoBanana,
    Generation,
    InvalidRequestError,
    Job,
    MalformedResponseError,
    NanoBananaError,
    RetryPolicy,
    ServerError,
)
from nanobanana_async.generate_request import MAX_RESPONSE_BYTES

pytestmark = [
    pytest.mark.anyio,
    # A body refused mid-stream for being over the cap leaves httpx's nested async generators
    # (Response.aiter_bytes -> aiter_raw) to the garbage collector, and Trio warns about them:
    # the SDK closes the response but cannot reach the inner generators (encode/httpx#3686).
    pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning"),
]

KEY = "nb-prop-0123456789abcdefQRST"
BASE = "https://api.nanobanana.test"
# Retry-After of any size is honoured up to max_retry_after: zero keeps the examples from
# sleeping (a longer demand fails the call instead, which is part of what is checked).
NO_WAIT = RetryPolicy(max_retries=2, initial_delay=0, max_delay=0, max_retry_after=0)

PROPS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEWER = settings(PROPS, max_examples=60)

# -- strategies ------------------------------------------------------------------------------

# Every code point, lone surrogates and NUL included (st.text() leaves surrogates out).
any_char = st.characters(exclude_categories=())
# Lone surrogates are rare in st.text(any_char): splice one in often enough to matter.
any_text = st.one_of(
    st.text(any_char, max_size=60),
    st.builds(
        lambda a, c, b: a + c + b,
        st.text(max_size=10),
        st.characters(categories=["Cs"]),
        st.text(max_size=10),
    ),
)
wrong_type = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.booleans())

models = st.one_of(st.sampled_from(MODELS), any_text, wrong_type)
sizes = st.one_of(st.sampled_from(BASE_SIZES + EXTENDED_SIZES), any_text, wrong_type)
nums = st.one_of(st.integers(-3, 12), st.booleans(), st.floats(allow_nan=True), any_text)
prompts = st.one_of(any_text, st.text(max_size=300), wrong_type)
ids = st.one_of(st.none(), any_text, wrong_type)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
codes = st.one_of(
    st.sampled_from([0, 400, 401, 402, 408, 429, 500, 502, 503]), st.integers(), json_values
)
urls = st.one_of(
    st.just("https://cdn.test/a.png"),
    st.lists(st.just("https://cdn.test/b.png"), max_size=3),
    json_values,
)
documented_shapes = st.one_of(
    st.fixed_dictionaries(
        {
            "code": codes,
            "message": json_values,
            "data": st.one_of(json_values, st.fixed_dictionaries({"url": urls})),
        }
    ),
    st.fixed_dictionaries({"code": codes, "message": json_values}),
    st.fixed_dictionaries({"code": codes}),
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    documented_shapes.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=200).map(lambda t: f"<html><body><h1>502</h1>{t}</body></html>".encode()),
    # Deep nesting: the decoder's recursion limit is an error too, and must map to one.
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(1, 200_000).map(lambda n: b'{"code":0,"data":' * n),
    st.just(b""),
    # A valid answer with the key echoed: still valid; no key check here (see test_secrets).
    st.just(b'{"code":0,"message":"ok","data":{"url":"https://cdn.test/c.png"}}'),
)
header_value = st.text(
    st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=40
).map(lambda s: s.encode("latin-1"))
retry_values = st.one_of(
    header_value,
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.integers(-5, 10**6).map(lambda i: str(i).encode()),
    st.just(b"Wed, 21 Oct 2015 07:28:00 GMT"),
    st.just(b"Mon, 01 Jan 99999 00:00:00 GMT"),
    # Digits that str.isdigit() accepts and int() does not (superscripts in latin-1).
    st.sampled_from([b"\xb2", b"1\xb9", b"\xb3" * 8, b" 12", b"-1", b"1e3"]),
)
header_lists = st.lists(
    st.tuples(
        st.sampled_from(
            [b"retry-after", b"retry-after-ms", b"content-type", b"content-length", b"x-other"]
        ),
        retry_values,
    ),
    max_size=3,
)
statuses = st.one_of(st.integers(100, 599), st.sampled_from([200, 400, 401, 429, 500, 502, 503]))
responses = st.tuples(statuses, bodies, header_lists)


def answer(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
    return httpx.Response(status, headers=headers, content=body)


def echo_handler(request: httpx.Request) -> httpx.Response:
    """A well-behaved API: ``num`` URLs for any valid body."""
    sent = json.loads(request.content)
    n = sent["num"]
    url: str | list[str] = (
        "https://cdn.test/0.png" if n == 1 else [f"https://cdn.test/{i}.png" for i in range(n)]
    )
    return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": url}})


def client_with(handler: Any, policy: RetryPolicy = NO_WAIT) -> AsyncNanoBanana:
    return AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(handler), retry_policy=policy
    )


def assert_valid(generation: Generation, job: Job) -> None:
    assert isinstance(generation, Generation)
    assert isinstance(generation.urls, tuple)
    assert generation.urls
    assert all(isinstance(u, str) and u for u in generation.urls)
    assert (generation.model, generation.image_size, generation.num) == (
        job.model,
        job.image_size,
        job.num,
    )
    # Charged per image returned (issue 11, finding 19): fewer URLs than num cost less; more
    # cost what was asked.
    images = min(len(generation.urls), job.num)
    assert generation.credits == DEFAULT_PRICING[job.model] * images
    assert generation.partial == (len(generation.urls) < job.num)
    assert generation.elapsed >= 0


# -- Job inputs ------------------------------------------------------------------------------


@PROPS
@given(prompt=prompts, model=models, size=sizes, num=nums, job_id=ids)
async def test_any_job_input_is_a_job_or_an_invalid_request(
    anyio_backend: str, prompt: Any, model: Any, size: Any, num: Any, job_id: Any
) -> None:
    try:
        job = Job(prompt, model, size, num, job_id)
    except InvalidRequestError as exc:
        refused: InvalidRequestError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.param in {"prompt", "model", "image_size", "num", "id"}
        return
    # A job that validates can be sent: its body encodes, and the answer maps to a Generation.
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return echo_handler(request)

    async with client_with(handler) as client:
        generation = await client.generate(job)
    assert_valid(generation, job)
    assert len(generation.urls) == job.num
    assert sent == [job.to_body()]


@PROPS
@given(prompt=prompts, model=models, size=sizes, num=nums)
async def test_generate_keywords_never_raise_anything_else(
    anyio_backend: str, prompt: Any, model: Any, size: Any, num: Any
) -> None:
    async with client_with(echo_handler) as client:
        try:
            generation = await client.generate(prompt, model=model, image_size=size, num=num)
        except InvalidRequestError:
            return
    assert_valid(generation, Job(prompt, model, size, num))


@FEWER
@given(
    inputs=st.lists(
        st.one_of(
            prompts,
            st.builds(
                Job,
                # Valid Job prompts only (no NUL, no lone surrogate): a Job refuses the rest.
                st.text(
                    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                    min_size=1,
                    max_size=30,
                ).filter(str.strip),
                st.sampled_from(MODELS),
                st.just("1:1"),
                st.integers(1, 3),
            ),
        ),
        max_size=12,
    ),
    ordered=st.booleans(),
)
async def test_a_batch_of_any_inputs_reports_each_exactly_once(
    anyio_backend: str, inputs: list[Any], ordered: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with client_with(echo_handler) as client:
            report = await client.run_batch(
                inputs, concurrency=3, ordered=ordered, journal=f"{tmp}/journal.jsonl"
            )
        text = await anyio.Path(tmp, "journal.jsonl").read_text(encoding="utf-8")
        # Split on "\n" only: prompts may hold U+0085 or U+2028, which str.splitlines() splits on.
        lines = [json.loads(x) for x in text.split("\n") if x]
    assert [r.index for r in report.results] == list(range(len(inputs)))
    for result in report.results:
        assert result.status in ("succeeded", "failed")
        if result.ok:
            assert result.generation is not None
            assert result.job is not None
            assert_valid(result.generation, result.job)
        else:
            assert isinstance(result.error, InvalidRequestError)
    assert report.credits_spent == sum(r.credits for r in report.results)
    assert sorted(line["index"] for line in lines) == list(range(len(inputs)))


# -- server responses ------------------------------------------------------------------------


@PROPS
@given(answers=st.lists(responses, min_size=1, max_size=3))
async def test_any_response_is_a_generation_or_a_nanobanana_error(
    anyio_backend: str, answers: list[tuple[int, bytes, list[tuple[bytes, bytes]]]]
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return answer(*answers[(calls - 1) % len(answers)])

    job = Job("a lighthouse", "gemini-2.5-flash-image-hd", num=2)
    async with client_with(handler) as client:
        try:
            generation: Generation | None = await client.generate(job)
        except NanoBananaError as exc:
            error: NanoBananaError | None = exc
            generation = None
        else:
            error = None
    if generation is not None:
        assert_valid(generation, job)
    else:
        assert error is not None
        assert KEY not in str(error)
        assert KEY not in repr(error)
    assert 1 <= calls <= NO_WAIT.max_retries + 1


@FEWER
@given(answers=st.lists(responses, min_size=1, max_size=8), jobs=st.integers(1, 10))
async def test_a_batch_never_crashes_on_any_response(
    anyio_backend: str, answers: list[tuple[int, bytes, list[tuple[bytes, bytes]]]], jobs: int
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return answer(*answers[(calls - 1) % len(answers)])

    prompts_ = [f"prompt {i}" for i in range(jobs)]
    async with client_with(handler) as client:
        report = await client.run_batch(prompts_, concurrency=4)
    assert [r.index for r in report.results] == list(range(jobs))
    assert report.succeeded + report.failed + report.skipped == jobs
    for result in report.results:
        if result.ok:
            assert result.generation is not None
            assert result.job is not None
            assert_valid(result.generation, result.job)
        elif result.status == "failed":
            assert isinstance(result.error, NanoBananaError)
        else:  # a 401 or insufficient credits stops dispatch
            assert report.stopped_reason is not None
    assert report.credits_spent == sum(r.credits for r in report.results if r.ok)
    assert calls <= jobs * (NO_WAIT.max_retries + 1)


# -- huge responses are refused, not read ----------------------------------------------------


class Endless(httpx.AsyncByteStream):
    """A body that never ends; counts what the client pulled."""

    def __init__(self, chunk: bytes = b" " * 65536) -> None:
        self.chunk = chunk
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"code":0,"message":"ok","data":{"url":"https://cdn.test/x.png"},"pad":"'
        while True:
            self.pulled += len(self.chunk)
            yield self.chunk

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("status", [200, 500])
async def test_an_endless_body_is_refused_after_the_cap(anyio_backend: str, status: int) -> None:
    stream = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=stream)

    # An error status still classifies the failure: a huge 5xx page is a (retryable) server
    # error, only a success with an oversized body is malformed.
    expected = MalformedResponseError if status == 200 else ServerError
    async with client_with(handler) as client:
        with pytest.raises(expected, match="cap"):
            await client.generate("x", max_retries=0)
    # Read at most one chunk past the cap, and the stream was closed (not left to the GC).
    assert stream.pulled <= MAX_RESPONSE_BYTES + len(stream.chunk)
    assert stream.closed


async def test_a_declared_huge_body_is_refused_unread(anyio_backend: str) -> None:
    stream = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-length": str(10 * MAX_RESPONSE_BYTES)}, stream=stream
        )

    async with client_with(handler) as client:
        with pytest.raises(MalformedResponseError, match="cap"):
            await client.generate("x")
    assert stream.pulled == 0


@pytest.mark.parametrize("extra", [0, 1])
async def test_the_cap_is_exact(anyio_backend: str, extra: int) -> None:
    head = b'{"code":0,"message":"ok","data":{"url":"https://cdn.test/x.png"}}'
    body = head + b" " * (MAX_RESPONSE_BYTES - len(head) + extra)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with client_with(handler) as client:
        if extra:
            with pytest.raises(MalformedResponseError):
                await client.generate("x")
        else:
            generation = await client.generate("x")
            assert generation.urls == ("https://cdn.test/x.png",)


async def test_deeply_nested_json_is_an_sdk_error(anyio_backend: str) -> None:
    for body in (b"[" * 100_000, b'{"code":0,"data":' * 50_000):

        def handler(request: httpx.Request, body: bytes = body) -> httpx.Response:
            return httpx.Response(502, content=body)

        async with client_with(handler) as client:
            with pytest.raises(NanoBananaError):
                await client.generate("x")


async def test_a_prompt_that_cannot_be_encoded_is_refused_before_sending(
    anyio_backend: str,
) -> None:
    sent = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return echo_handler(request)

    async with client_with(handler) as client:
        for prompt in ("a \ud800 lone surrogate", "\udfff"):
            with pytest.raises(InvalidRequestError):
                await client.generate(prompt)
        with pytest.raises(InvalidRequestError):
            Job("fine", id="bad \ud800 id")
    assert sent == 0
