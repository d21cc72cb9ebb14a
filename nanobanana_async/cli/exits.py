"""Exit statuses, and the error a command raises for one clear line on stderr."""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "PROG",
    "CLIError",
]

PROG = "nanobanana"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A worker that stopped because the credits ran out (its budget, the shared limits' or the
# account's): the jobs it could not pay for stay pending. Restarting it would not help.
EXIT_STOPPED = 3
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


class CLIError(Exception):
    """A user-facing failure: one line on stderr and an exit status, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
