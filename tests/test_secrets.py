"""Secrets: the API key never leaks, and never travels where it should not.

The key must not appear (not even an 8-character piece of it) in ``repr``, in any error's text,
in logs at DEBUG (every logger, httpx and httpcore included), in journals, reports, the gallery
or the CLI's output, even when the server echoes it back. ``Authorization`` goes to the API's
own origin only: never to an image host, not across redirects. A plain-``http`` base URL is
refused for a non-loopback host unless the caller opts in.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanobanana_async import (
    APIError,
    AsyncNanoBanana,
    InvalidRequestError,
    Job,
    NanoBananaError,
    RetryPolicy,
)

pytestmark = pytest.mark.anyio

# Recognisable, and long enough that any 8-character piece of it is distinctive.
KEY = "sk-live-SECRET-7f3a9c1e5b2d8f4a6c0e"
BASE = "https://api.nanobanana.test"
GENERATE = BASE + "/v1/images/generate"
CDN = "https://cdn.images.test"
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def pieces(key: str = KEY, size: int = 8) -> list[str]:
    return [key[i : i + size] for i in range(len(key) - size + 1)]


def assert_no_key(text: str, where: str = "", key: str = KEY) -> None:
    leaked = [p for p in pieces(key) if p in text]
    assert not leaked, f"key pieces {leaked[:3]} found in {where}: {text[:300]!r}"


def error_texts(exc: BaseException) -> str:
    """Everything a user may print about an exception: str, repr, args, the traceback."""
    parts = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    parts += [repr(v) for v in vars(exc).values()]
    return "\n".join(parts)


def ok(*urls: str) -> httpx.Response:
    url: str | list[str] = urls[0] if len(urls) == 1 else list(urls)
    return httpx.Response(200, json={"code": 0, "message": "ok", "data": {"url": url}})


# -- repr and errors ---------------------------------------------------------------------------


def test_repr_and_str_of_the_client_hide_the_key() -> None:
    client = AsyncNanoBanana(KEY, base_url=BASE)
    for text in (repr(client), str(client), f"{client!r:>200}"):
        assert_no_key(text, "repr(client)")
    assert "...6c0e" in repr(client)  # the usual last-4 hint, nothing more


@pytest.mark.parametrize("key", ["short", "k" * 19])
def test_short_keys_are_fully_masked(key: str) -> None:
    assert key not in repr(AsyncNanoBanana(key, base_url=BASE))


ECHOES: list[tuple[str, Callable[[], httpx.Response]]] = [
    ("401-json", lambda: httpx.Response(401, json={"code": 401, "message": f"bad key {KEY}"})),
    ("400-json", lambda: httpx.Response(400, json={"code": 400, "message": f"{KEY} invalid"})),
    ("200-code-500", lambda: httpx.Response(200, json={"code": 500, "message": KEY * 3})),
    ("402-credits", lambda: httpx.Response(402, json={"code": 402, "message": f"{KEY}: no"})),
    ("502-html", lambda: httpx.Response(502, text=f"<html><h1>Bad gateway</h1>{KEY}</html>")),
    # The key straddling the 200-character cut of the body snippet.
    ("502-straddle", lambda: httpx.Response(502, text="x" * 190 + KEY + "y" * 50)),
    ("200-malformed", lambda: httpx.Response(200, text=f"Authorization: Bearer {KEY}")),
    ("200-no-urls", lambda: httpx.Response(200, json={"code": 0, "data": {"key": KEY}})),
    ("429", lambda: httpx.Response(429, json={"code": 429, "message": KEY}, headers={"retry-after": "9e9"})),  # noqa: E501
    ("message-not-str", lambda: httpx.Response(500, json={"code": 500, "message": [KEY]})),
]  # fmt: skip


@pytest.mark.parametrize("make", [m for _, m in ECHOES], ids=[n for n, _ in ECHOES])
async def test_errors_never_carry_the_key_even_when_the_server_echoes_it(
    anyio_backend: str, make: Callable[[], httpx.Response]
) -> None:
    async with AsyncNanoBanana(
        KEY,
        base_url=BASE,
        transport=httpx.MockTransport(lambda request: make()),
        retry_policy=FAST,
    ) as client:
        with pytest.raises(NanoBananaError) as info:
            await client.generate("x")
    assert_no_key(error_texts(info.value), "the error")


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError(""),
    ],
    ids=["connect", "read-timeout", "dropped", "read-error"],
)
async def test_connection_errors_never_carry_the_key(
    anyio_backend: str, exc: httpx.HTTPError
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        exc.request = request  # as httpx does: the request (with its headers) rides along
        raise exc

    async with AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(handler), retry_policy=FAST
    ) as client:
        with pytest.raises(NanoBananaError) as info:
            await client.generate("x")
    # Chained from None: the httpx exception, which holds the request and so the
    # Authorization header, is not attached to what the caller sees.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert_no_key(error_texts(info.value), "the connection error")


def test_constructor_errors_never_carry_the_key() -> None:
    for base_url in ("http://api.example.com", "ftp://x", "https://"):
        with pytest.raises(InvalidRequestError) as info:
            AsyncNanoBanana(KEY, base_url=base_url)
        assert_no_key(error_texts(info.value), f"error for {base_url}")
    with pytest.raises(InvalidRequestError) as bad_key:
        AsyncNanoBanana(KEY + "\r\nX-Injected: 1")
    assert_no_key(error_texts(bad_key.value), "control-character key error")


# -- logs, journals, reports -------------------------------------------------------------------


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of every logger at DEBUG (httpx, httpcore and the SDK included)."""
    caplog.set_level(logging.DEBUG)
    for name in ("nanobanana_async", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def echoing_api() -> Callable[[httpx.Request], httpx.Response]:
    """An API that echoes the key in every error, fails each prompt's first attempt, and serves
    images on its own origin (so Authorization is sent to it) and on a CDN."""
    seen: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, content=PNG)
        prompt = json.loads(request.content)["prompt"]
        if "fatal" in prompt:
            return httpx.Response(400, json={"code": 400, "message": f"rejected for {KEY}"})
        if prompt not in seen:
            seen.add(prompt)
            return httpx.Response(503, text=f"<html>upstream {KEY} down</html>")
        n = len(seen)
        return ok(f"{BASE}/files/{n}.png", f"{CDN}/{n}.png")

    return handler


async def test_debug_logs_journal_and_report_never_hold_the_key(
    anyio_backend: str, tmp_path: pathlib.Path, all_logs: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "journal.jsonl"
    jobs = [Job(f"prompt {i}", num=2) for i in range(6)] + [Job("fatal prompt")]
    async with AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(echoing_api()), retry_policy=FAST
    ) as client:
        report = await client.run_batch(
            jobs, concurrency=3, journal=journal, download_dir=tmp_path / "out"
        )
        with pytest.raises(APIError):
            await client.generate("fatal again")
    assert report.succeeded == 6
    assert report.failed == 1
    assert report.retries > 0  # the retry log lines, with their causes, were written
    records = all_logs.records
    assert any(r.levelno == logging.DEBUG for r in records)
    assert any("retrying" in r.getMessage() for r in records)
    for record in records:
        assert_no_key(record.getMessage(), f"log record {record.name}")
        assert_no_key(repr(record.args), f"log args {record.name}")
    assert_no_key(all_logs.text, "formatted logs")
    assert_no_key(journal.read_text(), "the journal")
    assert_no_key(repr(report), "repr(report)")
    for result in report.results:
        assert_no_key(json.dumps(result.to_record()), "a journal record")
        if result.error is not None:
            assert_no_key(error_texts(result.error), "a result's error")


async def test_a_key_echoed_percent_encoded_keeping_slashes_never_reaches_the_retry_logs(
    anyio_backend: str, all_logs: pytest.LogCaptureFixture
) -> None:
    # urllib.parse.quote keeps "/": the form a server writing the key into a query string or
    # a path echoes. Every retry logs its cause, the server's message.
    from urllib.parse import quote

    key = "sk-live/SECRET+7f3a9c1e=5b2d8f4a/6c0e"
    echoed = quote(key)
    assert "/" in echoed
    assert "%2B" in echoed

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"code": 503, "message": f"no upstream for ?key={echoed}"})

    async with AsyncNanoBanana(
        key, base_url=BASE, transport=httpx.MockTransport(handler), retry_policy=FAST
    ) as client:
        with pytest.raises(APIError) as info:
            await client.generate("x")
    assert any("retrying" in r.getMessage() for r in all_logs.records)
    for text in (all_logs.text, error_texts(info.value), repr(info.value.body)):
        assert echoed not in text
        assert_no_key(text, "the logs or the error", key=key)
        assert_no_key(text, "the logs or the error", key=echoed)


# -- Authorization goes to the API's origin only ----------------------------------------------


class Recorder:
    """A transport that records every request and answers per host."""

    def __init__(self, routes: dict[str, Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for prefix, answer in self.routes.items():
            if str(request.url).startswith(prefix):
                return answer(request)
        return httpx.Response(200, content=PNG)

    def auth_by_url(self) -> list[tuple[str, bool]]:
        """Per request: did it carry the key? (httpx itself turns a URL's own user info into
        Basic auth: that is the URL's credential, not ours, so only the key counts.)"""
        return [(str(r.url), KEY in r.headers.get("authorization", "")) for r in self.requests]


def redirect(to: str, status: int = 302) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, headers={"location": to})


@pytest.mark.parametrize(
    ("url", "routes", "expected"),
    [
        # Same origin: the key is sent (proves the check below can see it).
        (f"{BASE}/files/a.png", {}, [(f"{BASE}/files/a.png", True)]),
        (f"{CDN}/a.png", {}, [(f"{CDN}/a.png", False)]),
        # Redirects away from the origin drop it, whatever the status.
        *[
            (
                f"{BASE}/r",
                {f"{BASE}/r": redirect(f"{CDN}/a.png", status)},
                [(f"{BASE}/r", True), (f"{CDN}/a.png", False)],
            )
            for status in (301, 302, 303, 307, 308)
        ],
        # ... including to the same host on another port, and a downgrade to plain http.
        (
            f"{BASE}/r",
            {f"{BASE}/r": redirect("https://api.nanobanana.test:8443/a.png")},
            [(f"{BASE}/r", True), ("https://api.nanobanana.test:8443/a.png", False)],
        ),
        (
            f"{BASE}/r",
            {f"{BASE}/r": redirect("http://api.nanobanana.test/a.png")},
            [(f"{BASE}/r", True), ("http://api.nanobanana.test/a.png", False)],
        ),
        # A CDN that bounces back to the API's origin never gets the key in between.
        (
            f"{CDN}/r",
            {f"{CDN}/r": redirect(f"{CDN}/s"), f"{CDN}/s": redirect(f"{BASE}/a.png")},
            [(f"{CDN}/r", False), (f"{CDN}/s", False), (f"{BASE}/a.png", False)],
        ),
    ],
)
async def test_authorization_stays_on_the_api_origin_across_redirects(
    anyio_backend: str,
    tmp_path: pathlib.Path,
    url: str,
    routes: dict[str, Callable[[httpx.Request], httpx.Response]],
    expected: list[tuple[str, bool]],
) -> None:
    recorder = Recorder(routes)
    async with AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(recorder)
    ) as client:
        await client.download(url, tmp_path / "a.png")
    assert recorder.auth_by_url() == expected
    for request in recorder.requests:
        if KEY in request.headers.get("authorization", ""):
            assert request.url.host == "api.nanobanana.test"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_generate_never_follows_a_redirect(anyio_backend: str, status: int) -> None:
    recorder = Recorder({GENERATE: redirect("https://evil.test/v1/images/generate", status)})
    async with AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(recorder), retry_policy=FAST
    ) as client:
        with pytest.raises(NanoBananaError):
            await client.generate("x")
    assert {r.url.host for r in recorder.requests} == {"api.nanobanana.test"}


TRICKY = [
    "https://api.nanobanana.test@evil.test/a.png",
    "https://api.nanobanana.test.evil.test/a.png",
    "https://evil.test/api.nanobanana.test/a.png",
    "https://evil.test/?host=api.nanobanana.test",
    "https://api.nanobanana.test:444/a.png",
    "http://api.nanobanana.test/a.png",
    "https://xapi.nanobanana.test/a.png",
    "https://api.nanobanana.test./a.png",
]


@pytest.mark.parametrize("url", TRICKY)
async def test_lookalike_image_urls_get_no_key(
    anyio_backend: str, tmp_path: pathlib.Path, url: str
) -> None:
    recorder = Recorder({})
    async with AsyncNanoBanana(
        KEY, base_url=BASE, transport=httpx.MockTransport(recorder)
    ) as client:
        await client.download(url, tmp_path / "a.png")
    assert [auth for _, auth in recorder.auth_by_url()] == [False]


@settings(max_examples=150, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(["api.nanobanana.test", "API.NanoBanana.test", "cdn.test", "evil.test"]),
    port=st.sampled_from([None, 443, 80, 8443]),
)
def test_the_key_goes_to_exactly_the_api_origin(scheme: str, host: str, port: int | None) -> None:
    client = AsyncNanoBanana(KEY, base_url=BASE)
    url = httpx.URL(f"{scheme}://{host}" + (f":{port}" if port else "") + "/a.png")
    same = url.scheme == "https" and url.host == "api.nanobanana.test" and (url.port or 443) == 443
    assert ("Authorization" in client._headers_for(url)) is same


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_image_host_on_a_socket_never_sees_the_key(
    anyio_backend: str, tmp_path: pathlib.Path
) -> None:
    # The API on 127.0.0.1, its images on "localhost": another origin, same server. The
    # emulator counts image requests that carried an Authorization header.
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import Emulator, serve

    port = free_port()
    emulator = Emulator(image_base_url=f"http://localhost:{port}")
    with serve(emulator, "127.0.0.1", port) as running:
        async with AsyncNanoBanana(KEY, base_url=running.base_url, retry_policy=FAST) as client:
            report = await client.run_batch(
                [Job(f"image host {i}", num=2) for i in range(4)], download_dir=tmp_path
            )
    assert report.ok
    assert emulator.stats.images_served == 8
    assert emulator.stats.image_requests_with_authorization == 0


# -- plain http ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://api.nanobananaapi.dev",
        "HTTP://API.EXAMPLE.COM",
        "http://10.0.0.5:8080",
        "http://192.168.1.10",
        "http://0.0.0.0:8000",
        "http://127.0.0.1.nip.io",
        "http://localhost.evil.com",
        "http://[::ffff:7f00:1]",
        "http://2130706433",
        "http://api.test:443",
    ],
)
def test_plain_http_to_another_host_is_refused(
    monkeypatch: pytest.MonkeyPatch, base_url: str
) -> None:
    with pytest.raises(InvalidRequestError, match="allow_insecure_http") as info:
        AsyncNanoBanana(KEY, base_url=base_url)
    assert_no_key(error_texts(info.value))
    monkeypatch.setenv("NANOBANANA_BASE_URL", base_url)
    with pytest.raises(InvalidRequestError):
        AsyncNanoBanana(KEY)
    # Opting in is explicit, and then it works.
    assert AsyncNanoBanana(KEY, base_url=base_url, allow_insecure_http=True).base_url


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:2", "https://x.test"]
)
def test_loopback_and_https_are_allowed(base_url: str) -> None:
    AsyncNanoBanana(KEY, base_url=base_url)


# -- the command line: output, logs, journal, gallery ------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    env.update(COLUMNS="160", PYTHONUNBUFFERED="1", **extra)
    return env


def run_cli(*args: str, cwd: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanobanana_async", *args],
        cwd=cwd,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def every_file(root: pathlib.Path) -> Iterator[tuple[pathlib.Path, str]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes().decode("utf-8", "replace")


@pytest.mark.slow
def test_the_cli_never_prints_or_stores_the_key(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import Emulator, Faults, serve

    wrong = "sk-live-WRONG-0d1e2f3a4b5c6d7e8f90"
    prompts = "".join(f"secret-check prompt {i}\n" for i in range(12))
    (tmp_path / "p.txt").write_text(prompts + "\n", encoding="utf-8")
    (tmp_path / "jobs.jsonl").write_text(
        '{"prompt": "two at once", "num": 2}\n{"prompt": "bad size", "image_size": "7:7"}\n',
        encoding="utf-8",
    )
    emulator = Emulator(
        keys={KEY: 1_000},
        faults=Faults(
            server_error_rate=0.3,
            html_error_share=0.5,
            rate_limit_rate=0.1,
            retry_after=0.01,
            latency=0.01,
        ),
        seed=7,
    )
    outputs: list[tuple[str, str]] = []
    with serve(emulator, "127.0.0.1", 0) as server:
        base = str(server.base_url)
        on_cli = ["--api-key", KEY, "--base-url", base]
        runs = [
            # The key in the environment, debug logs, JSON lines, gallery and journal.
            (
                ["-vv", "batch", "p.txt", "-o", "out", "--yes", "--json", "-c", "4"],
                cli_env(NANOBANANA_API_KEY=KEY, NANOBANANA_BASE_URL=base),
            ),
            # The key on the command line, a rerun that resumes.
            (
                [*on_cli, "-vv", "batch", "p.txt", "-o", "out", "--yes"],
                cli_env(),
            ),
            (
                [*on_cli, "-vv", "generate", "one more", "-o", "gen", "--json"],
                cli_env(),
            ),
            # A wrong key: the 401 and the stop reason are shown, the key is not.
            (
                ["-vv", "batch", "p.txt", "-o", "wrong", "--yes", "--json"],
                cli_env(NANOBANANA_API_KEY=wrong, NANOBANANA_BASE_URL=base),
            ),
            (
                ["--api-key", wrong, "--base-url", base, "generate", "x"],
                cli_env(),
            ),
        ]  # fmt: skip
        for args, env in runs:
            proc = run_cli(*args, cwd=tmp_path, env=env)
            assert "Traceback" not in proc.stderr, proc.stderr
            outputs.append((f"{args} stdout", proc.stdout))
            outputs.append((f"{args} stderr", proc.stderr))
    assert emulator.stats.generate_requests > 12  # the runs did reach the server
    assert any("retrying" in text for _, text in outputs)  # debug logs were on
    assert any("401" in text or "key" in text.lower() for _, text in outputs)
    written = list(every_file(tmp_path))
    names = {p.relative_to(tmp_path).as_posix() for p, _ in written}
    assert {"out/index.html", "out/journal.db", "wrong/journal.db"} <= names
    for secret in (KEY, wrong):
        for where, text in outputs:
            assert_no_key(text, where, key=secret)
        for path, text in written:
            assert_no_key(text, str(path), key=secret)


def test_pieces_would_catch_a_leak() -> None:
    # The checker itself: a masked or partial key is still caught.
    with pytest.raises(AssertionError):
        assert_no_key(f"Bearer {KEY[:12]}***")
    assert_no_key("...6c0e")
