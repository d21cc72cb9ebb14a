"""What a batch may do: concurrency, budget, rate, journal, downloads, order, retries."""

from __future__ import annotations

import difflib
import os
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any, TypedDict

import attrs

from ..models import Job
from ..validation import positive, validator, whole
from .stores import JobStore

__all__ = ["BatchKWs", "BatchOptions", "JobInput", "WorkerKWs", "options_from"]

JobInput = Iterable[Job | str] | AsyncIterable[Job | str]


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

    concurrency: int = attrs.field(default=8, validator=validator(whole, minimum=1))
    max_credits: int | None = attrs.field(
        default=None, validator=validator(whole, minimum=0, none=True)
    )
    max_per_second: float | None = attrs.field(
        default=None, validator=validator(positive, none=True)
    )
    journal: str | os.PathLike[str] | JobStore | None = None
    download_dir: str | os.PathLike[str] | None = None
    ordered: bool = False
    max_retries: int | None = None
    retry_ambiguous: bool | None = None
    follow: bool = False
    poll_interval: float = attrs.field(default=1.0, validator=validator(positive))


class _RunKWs(TypedDict, total=False):
    concurrency: int
    max_credits: int | None
    max_per_second: float | None
    download_dir: str | os.PathLike[str] | None
    max_retries: int | None
    retry_ambiguous: bool | None


class BatchKWs(_RunKWs, total=False):
    """The options of :meth:`AsyncNanoBanana.batch` and ``run_batch`` (see
    :class:`BatchOptions`), typed for ``**options: Unpack[BatchKWs]``."""

    journal: str | os.PathLike[str] | JobStore | None
    ordered: bool


class WorkerKWs(_RunKWs, total=False):
    """The options of :meth:`AsyncNanoBanana.worker` and ``run_worker`` (see
    :class:`BatchOptions`; the store is the worker's first argument)."""

    follow: bool
    poll_interval: float


def options_from(
    kwargs: Mapping[str, Any], allowed: type[BatchKWs] | type[WorkerKWs], call: str, **more: Any
) -> BatchOptions:
    """:class:`BatchOptions` from the keywords of ``call``; one it does not take is refused as
    Python refuses it, naming the closest one it does take."""
    known = allowed.__annotations__.keys()
    for name in kwargs:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{call}() got an unexpected keyword argument {name!r}{hint}")
    return BatchOptions(**kwargs, **more)
