"""The Ray tests run on the suite's local Ray (``ray_session``, tests/conftest.py: once per test
session), a real Postgres and a real Redis."""

from tests.support.redis_server import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]
