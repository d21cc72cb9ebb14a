"""What a batch may do: concurrency, budget, rate, journal, downloads, order, retries."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterable, Iterable
from typing import Any

import attrs

from ..errors import InvalidRequestError
from ..models import Job
from .stores import JobStore

__all__ = ["BatchOptions", "JobInput"]

JobInput = Iterable[Job | str] | AsyncIterable[Job | str]


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not value > 0 or math.isinf(value)):
        raise InvalidRequestError(
            f"{attr.name} must be a positive number, got {value!r}", param=attr.name
        )


def _positive_int(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(
            f"{attr.name} must be an integer >= 1, got {value!r}", param=attr.name
        )


def _credits_or_none(_inst: object, attr: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidRequestError(
            f"{attr.name} must be an integer >= 0 or None, got {value!r}", param=attr.name
        )


@attrs.frozen(kw_only=True)
class BatchOptions:
    """Options of :meth:`AsyncNanoBanana.batch` and :meth:`AsyncNanoBanana.run_batch`.

    - ``concurrency``: generate requests in flight at most.
    - ``max_credits``: budget; credits are reserved before a job is sent, so the batch never
      commits more. Jobs that cannot fit are ``skipped``.
    - ``max_per_second``: request starts per second, retries included; no one-second window
      holds more than ``floor(max_per_second)`` starts (one start per ``1/max_per_second``
      seconds below 1). Starts are spaced evenly, never in bursts, 50 ms per window apart
      beyond the limit so network jitter does not push the server's windows over it.
    - ``journal``: where jobs are recorded, so a rerun skips jobs already generated: a JSONL
      file (a path), ``sqlite:///path``, ``postgresql://...`` or a job store object.
    - ``download_dir``: save each succeeded job's images there.
    - ``ordered``: yield results in input order. Jobs dispatched and not yet taken by the
      consumer are never more than ``concurrency``, so a slow job holds later ones back.
    - ``max_retries`` / ``retry_ambiguous``: override the client's retry policy.
    - ``follow`` (workers): keep polling the store for new jobs every ``poll_interval``
      seconds instead of ending once none is pending.
    """

    concurrency: int = attrs.field(default=8, validator=_positive_int)
    max_credits: int | None = attrs.field(default=None, validator=_credits_or_none)
    max_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)
    journal: str | os.PathLike[str] | JobStore | None = None
    download_dir: str | os.PathLike[str] | None = None
    ordered: bool = False
    max_retries: int | None = None
    retry_ambiguous: bool | None = None
    follow: bool = False
    poll_interval: float = attrs.field(default=1.0, validator=_positive_or_none)
