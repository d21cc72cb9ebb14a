"""What importing the SDK loads: nothing optional until it is used (issue 15).

Each check runs in a fresh interpreter, so ``sys.modules`` is its own. Optional packages
(rich, uvicorn, psycopg, opentelemetry, ray, pyarrow) are all installed here, and aiohttp (the
benchmarks' baseline, which the SDK does not use), so a module that imported one would show.

httpx imports ``click``, ``rich`` and ``pygments`` itself (``httpx._main``, its command line)
whenever all three are installed, and httpcore imports ``trio`` whenever it is installed: the
SDK cannot stop either once it imports them. ``import nanobanana_async`` therefore imports
neither: its public names load on first use (PEP 562).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ("aiohttp", "rich", "uvicorn", "psycopg", "opentelemetry", "ray", "pyarrow")


def loaded_after(code: str, *watched: str) -> list[str]:
    """The packages of ``watched`` in ``sys.modules`` after ``code`` ran in a new interpreter."""
    report = f"\nimport json, sys\nprint(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code) + report],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("package", OPTIONAL)
def test_importing_the_package_loads_no_optional_package(package: str) -> None:
    assert loaded_after("import nanobanana_async", package) == []


def test_importing_the_package_loads_neither_httpx_nor_anyio() -> None:
    watched = ("httpx", "httpcore", "h11", "anyio", "trio", "tenacity", "asyncio")
    assert loaded_after("import nanobanana_async", *watched) == []


def test_every_public_name_is_there_and_loads_on_first_use() -> None:
    code = """
    import nanobanana_async
    names = nanobanana_async.__all__
    assert sorted(names) == sorted(set(names))
    for name in names:
        assert getattr(nanobanana_async, name) is not None, name
    assert set(names) <= set(dir(nanobanana_async))
    from nanobanana_async import AsyncNanoBanana, Job, RetryPolicy
    assert AsyncNanoBanana.__module__ == "nanobanana_async.client"
    """
    # Asking for PostgresStore is using it: psycopg may load then, nothing else optional.
    assert loaded_after(code, "aiohttp", "uvicorn", "opentelemetry") == []


def test_help_loads_no_client_and_no_http_stack() -> None:
    code = """
    import sys
    from nanobanana_async.cli import main
    sys.argv = ["nanobanana", "--help"]
    try:
        main()
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    """
    watched = ("httpx", "anyio", "aiohttp", "rich", "asyncio", "nanobanana_async.client")
    assert loaded_after(code, *watched) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_client_never_imports_aiohttp(backend: str) -> None:
    # aiohttp is installed here (the benchmarks' baseline): the SDK's requests go through its
    # own h11 pool on both loops, so nothing a client does loads it.
    code = f"""
    import anyio
    from nanobanana_async import AsyncNanoBanana
    from nanobanana_async.emulator import serve

    async def main(url):
        async with AsyncNanoBanana("sk-test", base_url=url) as c:
            await c.generate("a heron")
            await c.run_batch(["an owl", "a wren"], concurrency=2)

    with serve() as server:
        anyio.run(main, server.base_url, backend={backend!r})
    """
    assert loaded_after(code, "aiohttp") == []


def test_the_ray_integration_without_ray_says_which_extra_to_install() -> None:
    # Ray is installed here: the interpreter is told it is not (None in sys.modules).
    code = """
    import sys
    sys.modules["ray"] = None
    from nanobanana_async import NanoBananaError
    try:
        import nanobanana_async.ray
    except NanoBananaError as exc:
        assert str(exc) == (
            "the Ray integration needs Ray Data: pip install 'nanobanana-async[ray]'"
        ), str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__
    else:
        raise AssertionError("imported without Ray")
    """
    assert loaded_after(code, "ray.data") == []
