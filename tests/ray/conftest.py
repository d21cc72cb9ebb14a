"""The Ray tests run on a local Ray (once per test session), a real Postgres and a real Redis."""

from tests.support.ray_cluster import ray_session
from tests.support.redis_server import redis_server, redis_url

__all__ = ["ray_session", "redis_server", "redis_url"]
