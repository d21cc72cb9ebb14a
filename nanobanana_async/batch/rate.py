"""Request starts per second, spaced evenly: the batch's rate cap (the limits' spacing)."""

from __future__ import annotations

from ..limits.spacing import RateLimiter

__all__ = ["RateLimiter"]
