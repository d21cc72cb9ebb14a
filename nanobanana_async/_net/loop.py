"""Which event loop runs: the transports take asyncio-only paths only on asyncio."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["running_loop"]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under Trio (or outside any loop).

    asyncio is not imported here: a program on Trio need not import it at all.
    """
    module = sys.modules.get("asyncio")
    if module is None:  # never imported: no asyncio loop runs
        return None
    try:
        loop: asyncio.AbstractEventLoop = module.get_running_loop()
    except RuntimeError:
        return None
    return loop
