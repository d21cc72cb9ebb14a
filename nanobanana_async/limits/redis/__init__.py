"""Limits shared through Redis (extra ``redis``: coredis, imported on first use)."""

from .shared import RedisLimits

__all__ = ["RedisLimits"]
