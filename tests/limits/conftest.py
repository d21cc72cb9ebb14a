"""The limits tests run against a real Redis (tests/support/redis_server.py)."""

from tests.support.redis_server import redis_factory, redis_server, redis_url

__all__ = ["redis_factory", "redis_server", "redis_url"]
