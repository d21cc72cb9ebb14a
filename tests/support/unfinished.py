"""Marks a test whose failed reads leave httpx's async generators unfinished.

A read stopped by an error or at the size cap leaves httpx's and httpcore's async generators
unfinished; Trio warns when the garbage collector finalises them (encode/httpx#3686, with
httpx's own transport too). The marked test ignores that warning and collects the garbage
before it ends: left to the collector's own timing, the warning surfaced in whichever test
ran next, which does not ignore it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec

import pytest

P = ParamSpec("P")


def unfinished_generators(test: Callable[P, Any]) -> Callable[P, Any]:
    @wraps(test)
    async def collected(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await test(*args, **kwargs)
        finally:
            gc.collect()

    ignoring = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    marked: Callable[P, Any] = ignoring(collected)
    return marked
