"""Connections as anyio byte streams, lean on each loop: what the h11 pool and the Redis client
open. Nothing here knows HTTP or Redis."""
