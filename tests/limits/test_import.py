"""The Redis limits stay out of the core import path: loaded only when RedisLimits is used."""

from __future__ import annotations

import subprocess
import sys


def test_the_redis_limits_are_imported_only_when_used() -> None:
    code = (
        "import sys\n"
        "import nanobanana_async\n"
        "from nanobanana_async import AsyncNanoBanana, LocalLimits\n"
        "from nanobanana_async.cli import build_parser\n"
        "build_parser()\n"
        "redis = [m for m in sys.modules if m.startswith('nanobanana_async.limits.redis')]\n"
        "assert redis == [], redis\n"
        "from nanobanana_async import RedisLimits\n"
        "RedisLimits('redis://127.0.0.1:1/0', namespace='x')\n"
        "assert 'nanobanana_async.limits.redis.resp' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
