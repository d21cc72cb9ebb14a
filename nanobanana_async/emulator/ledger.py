"""The emulator's credit ledger: balances per API key, charges, remembered replies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Final

from .requests import GenerateRequest, Refused
from .stats import EmulatorStats

__all__ = ["MAX_REMEMBERED_REPLIES", "Ledger"]

# A real API forgets idempotency keys after a while too; this keeps a million-request soak
# with honour_idempotency=True from holding every response forever.
MAX_REMEMBERED_REPLIES: Final = 100_000


class Ledger:
    """Credits per API key; charging is atomic, since the server thread and a test's thread
    may touch the ledger at once.

    ``keys`` None accepts any non-empty key, each starting with ``default_credits``. With
    ``honour_idempotency``, a repeated ``Idempotency-Key`` of a success is answered with the
    same body again without charging.
    """

    def __init__(
        self,
        keys: Mapping[str, int] | None,
        default_credits: int,
        *,
        honour_idempotency: bool,
    ) -> None:
        self._lock = threading.Lock()
        self._open = keys is None
        self._balances: dict[str, int] = {}
        self._default_credits = default_credits
        self._honour_idempotency = honour_idempotency
        self._replies: dict[tuple[str, str], tuple[GenerateRequest, bytes]] = {}
        for key, credits in (keys or {}).items():
            self.set_balance(key, credits)

    def balance(self, api_key: str) -> int:
        """Credits left on ``api_key``. Raises ``KeyError`` for a key that is not accepted."""
        api_key = api_key.strip()
        with self._lock:
            if api_key in self._balances:
                return self._balances[api_key]
            if self._open and api_key:
                return self._default_credits
        raise KeyError("unknown API key")

    def set_balance(self, api_key: str, credits: int) -> None:
        """Set the credits of ``api_key``, accepting the key from now on if it was not."""
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("an API key must be a non-empty string")
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise ValueError(f"credits must be an integer >= 0, got {credits!r}")
        with self._lock:
            self._balances[api_key.strip()] = credits

    def authenticate(self, authorization: bytes | None) -> str:
        """The API key of an ``Authorization`` header, or :class:`Refused` (401)."""
        scheme, _, key = (authorization or b"").decode("latin-1").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Refused(401, "invalid API key")
        with self._lock:
            if key in self._balances:
                return key
            if self._open:
                self._balances[key] = self._default_credits
                return key
        raise Refused(401, "invalid API key")

    def charge(
        self,
        api_key: str,
        request: GenerateRequest,
        cost: int,
        idempotency_key: str | None,
        answer: Callable[[], bytes],
        stats: EmulatorStats,
        *,
        required: int | None = None,
    ) -> tuple[bool, bytes]:
        """Charge ``cost`` and build the success body with ``answer``: (charged, body).

        A replay of a remembered success is answered without charging; a balance under
        ``required`` (default ``cost``; what the request asked for, when fewer images are
        generated and charged) is :class:`Refused` (400, "insufficient credits").
        """
        with self._lock:
            if self._honour_idempotency and idempotency_key is not None:
                remembered = self._replies.get((api_key, idempotency_key))
                if remembered is not None:
                    if remembered[0] != request:
                        raise Refused(
                            400, "Idempotency-Key was already used with different parameters"
                        )
                    stats.idempotent_replays += 1
                    return False, remembered[1]
            balance = self._balances.get(api_key, self._default_credits)
            if balance < (cost if required is None else max(cost, required)):
                raise Refused(400, "insufficient credits")
            self._balances[api_key] = balance - cost
            payload = answer()
            stats.count_charge(cost, idempotency_key)
            if self._honour_idempotency and idempotency_key is not None:
                if len(self._replies) >= MAX_REMEMBERED_REPLIES:
                    del self._replies[next(iter(self._replies))]
                self._replies[(api_key, idempotency_key)] = (request, payload)
        return True, payload
