"""The command-line tests that share limits use a real Redis (tests/support/redis_server.py)."""

from tests.support.redis_server import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]
