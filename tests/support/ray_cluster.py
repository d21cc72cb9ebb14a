"""A local Ray for the tests: started once per test session, on loopback, shut down at its end.

Two CPUs as on the machines the suite runs on; no dashboard (the state API is not needed:
the tests find an actor's PID in the job store, whose lease owner names it). Ray binds its
own services to 127.0.0.1 only. The actors' spools go to a directory of the session's own
(``XDG_STATE_HOME`` in their environment, which Ray captures when it starts), never into the
home of whoever runs the tests. Ray Data's own log stays in Ray's session directory. Skipped,
saying so, where Ray is not installed (the ``test`` extra installs it).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator

import pytest

__all__ = ["ray_session"]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[test]')")
    if ray.is_initialized():  # pragma: no cover - a test left one behind
        ray.shutdown()
    with tempfile.TemporaryDirectory(prefix="nanobanana-ray-state-") as state:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            runtime_env={"env_vars": {"XDG_STATE_HOME": state}},
        )
        # Ray Data logs every operator's metrics at DEBUG to its own file; kept out of the
        # reports of failing tests.
        logging.getLogger("ray.data").propagate = False
        try:
            yield
        finally:
            ray.shutdown()
