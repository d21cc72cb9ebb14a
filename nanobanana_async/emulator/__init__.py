"""The emulator of the Nano Banana image API: for tests, demos and benchmarks.

:class:`Emulator` is a plain ASGI application that speaks the same HTTP API as the real
service: it checks API keys, validates requests like the real API, keeps a per-key credit
ledger (``insufficient credits`` once a key runs out), returns image URLs and serves them as
small real PNGs with the requested aspect ratio. It counts everything it sees in
:attr:`Emulator.stats` and can inject faults (:class:`Faults`): server errors with JSON or
non-JSON bodies, 429s with ``Retry-After``, latency, and dropped connections, some of them
after the generation was charged; and charged answers a client may fail to read: truncated
or cut success bodies, successes sent with a 5xx, gzip nobody asked for, lone surrogates,
unfetchable URLs, fewer or more URLs than asked, and charges for clients that hung up.
Faults are drawn from a seeded random generator, so a test sees the same sequence every run.

Use it in-process, with no socket, through :meth:`Emulator.transport`::

    from nanobanana_async import AsyncNanoBanana
    from nanobanana_async.emulator import Emulator, Faults

    emulator = Emulator(keys={"test-key": 100}, faults=Faults(server_error_rate=0.2), seed=1)
    async with AsyncNanoBanana("test-key", transport=emulator.transport()) as client:
        generation = await client.generate("a red fox")
    assert emulator.balance("test-key") == 100 - generation.credits

or over a real loopback socket (extra ``emulator``, which installs uvicorn) with
:func:`serve`::

    with serve(Emulator()) as server:
        ...  # point any HTTP client at server.base_url

or from a shell, for a separate process: ``python -m nanobanana_async.emulator --port 8000``
(``nanobanana emulator`` does the same).

Faults below HTTP (stray bytes after a response, a close after a response that kept the
connection alive) come from a proxy in front of the served app:
``serve(emulator, wire=WireFaults(close_after_response_rate=0.5, seed=1))``.

Routes: ``POST /v1/images/generate``, ``GET /images/<id>.png`` and ``GET /_emulator/stats``
(the counters as JSON, for tests that run the emulator in another process: every counter, and
the last 1,000 records of each list unless ``?offset=M&limit=N`` asks for another page). Other
methods on these paths are answered 405 with ``Allow``.
"""

from .app import GENERATE_PATH, STATS_PATH, Emulator
from .cli import build_parser, main
from .faults import FAULT_KINDS, FAULT_RATES, Faults, parse_fault, parse_latency, with_fault_options
from .server import RunningEmulator, serve
from .stats import EmulatorStats, GenerateRecord
from .wire import WireFaults, WireProxy, WireStats

__all__ = [
    "FAULT_KINDS",
    "FAULT_RATES",
    "GENERATE_PATH",
    "STATS_PATH",
    "Emulator",
    "EmulatorStats",
    "Faults",
    "GenerateRecord",
    "RunningEmulator",
    "WireFaults",
    "WireProxy",
    "WireStats",
    "build_parser",
    "main",
    "parse_fault",
    "parse_latency",
    "serve",
    "with_fault_options",
]
