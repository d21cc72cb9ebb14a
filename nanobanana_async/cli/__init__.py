"""The ``nanobanana`` command line (extra ``cli``): generate, batch, estimate, models, emulator.

Output contract: what a script consumes (image URLs, JSON) goes to standard output; progress,
estimates, prompts and summaries go to standard error. Exit status: 0 when every job
succeeded, 1 when some failed or were skipped (or the user declined), 2 for usage and input
errors, 130 after Ctrl-C.

``main`` builds the parser from one module per command (``cmd_*``); ``common`` holds what the
commands share, ``inputs`` reads job files, ``progress`` and ``gallery`` show the results.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
