"""Whether an idle pooled connection may carry a request: its socket must have nothing to read.

A server that closes a keep-alive connection (idle timeout, or after every response without
``Connection: close``) leaves an EOF on the socket; a misbehaving one leaves bytes no request
asked for. A request sent on such a connection fails after it was sent, which for a paid API
means "may have been charged", so every pool polls the socket (without waiting) before reuse.
"""

from __future__ import annotations

import select
import socket

__all__ = ["is_readable"]


def is_readable(sock: socket.socket | None) -> bool:
    """Whether an idle socket has something to read: EOF, a reset, or unexpected bytes.

    A closed socket (no file descriptor) counts as readable; no socket at all (a transport
    that exposes none) as not.
    """
    if sock is None:
        return False
    fd = sock.fileno()
    if fd == -1:
        return True
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
