"""coredis stays out of the core import path: loaded only when RedisLimits is used."""

from __future__ import annotations

import subprocess
import sys


def test_coredis_is_imported_only_for_redis_limits() -> None:
    code = (
        "import sys\n"
        "import nanobanana_async\n"
        "from nanobanana_async import AsyncNanoBanana, LocalLimits\n"
        "from nanobanana_async.cli import build_parser\n"
        "build_parser()\n"
        "assert 'coredis' not in sys.modules, 'imported with the package'\n"
        "from nanobanana_async import RedisLimits\n"
        "RedisLimits('redis://127.0.0.1:1/0', namespace='x')\n"
        "assert 'coredis' not in sys.modules, 'imported by the constructor'\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
