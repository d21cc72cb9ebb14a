"""The emulator's live counters (:class:`EmulatorStats`)."""

from __future__ import annotations

import time
from typing import Any, Final

import attrs

from .faults import FAULT_KINDS

__all__ = ["MAX_REQUEST_START_TIMES", "EmulatorStats"]

MAX_REQUEST_START_TIMES: Final = 100_000


def _no_faults() -> dict[str, int]:
    return dict.fromkeys(FAULT_KINDS, 0)


@attrs.define
class EmulatorStats:
    """Live counters of an :class:`Emulator` (``emulator.stats``; JSON at ``/_emulator/stats``).

    Attributes:
        requests: every HTTP request, whatever the route.
        generate_requests: ``POST /v1/images/generate`` requests, faulted or not.
        generations: generate requests answered with success (``code`` 0) and charged.
        images_generated: the sum of ``num`` over ``generations``.
        credits_charged: every credit taken from a ledger, including generations whose
            connection was then dropped (``faults["dropped_after_charge"]``).
        in_flight: generate requests being handled right now.
        max_in_flight: the most generate requests ever handled at once.
        faults: injected faults by kind (see :data:`FAULT_KINDS`). A drop planned after the
            charge of a request that was then refused (bad key, invalid, no credits, or a
            replay) charged nothing and counts as ``dropped_before_charge``.
        by_status: responses by HTTP status. Dropped connections have none.
        charged_idempotency_keys: ``Idempotency-Key`` header -> number of charged
            generations sent with it. More than 1 means a client paid twice.
        duplicate_charges: charged generations whose ``Idempotency-Key`` had already been
            charged before.
        idempotent_replays: requests answered from an earlier success without charging
            (only with ``honour_idempotency=True``; not counted in ``generations``).
        images_served: image downloads answered with a PNG.
        image_requests_with_authorization: image requests that carried an ``Authorization``
            header (an SDK should never send the API key to an image host).
        request_start_times: ``time.monotonic()`` at the start of each generate request, in
            arrival order; only the first 100 000 are kept so memory stays bounded.
    """

    requests: int = 0
    generate_requests: int = 0
    generations: int = 0
    images_generated: int = 0
    credits_charged: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: dict[str, int] = attrs.field(factory=_no_faults)
    by_status: dict[int, int] = attrs.field(factory=dict)
    charged_idempotency_keys: dict[str, int] = attrs.field(factory=dict)
    duplicate_charges: int = 0
    idempotent_replays: int = 0
    images_served: int = 0
    image_requests_with_authorization: int = 0
    request_start_times: list[float] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (``by_status`` keys become strings, as JSON needs)."""
        # dict() and list() copy in one step under the GIL, so reading from another thread
        # while the server thread counts cannot fail with "changed size during iteration".
        return {
            "requests": self.requests,
            "generate_requests": self.generate_requests,
            "generations": self.generations,
            "images_generated": self.images_generated,
            "credits_charged": self.credits_charged,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults": dict(self.faults),
            "by_status": {str(k): v for k, v in dict(self.by_status).items()},
            "charged_idempotency_keys": dict(self.charged_idempotency_keys),
            "duplicate_charges": self.duplicate_charges,
            "idempotent_replays": self.idempotent_replays,
            "images_served": self.images_served,
            "image_requests_with_authorization": self.image_requests_with_authorization,
            "request_start_times": list(self.request_start_times),
        }

    def generate_started(self) -> None:
        """Count a generate request arriving."""
        self.generate_requests += 1
        if len(self.request_start_times) < MAX_REQUEST_START_TIMES:
            self.request_start_times.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def count_charge(self, cost: int, idempotency_key: str | None) -> None:
        """Count a charged generation of ``cost`` credits."""
        self.credits_charged += cost
        if idempotency_key is not None:
            seen = self.charged_idempotency_keys.get(idempotency_key, 0)
            self.charged_idempotency_keys[idempotency_key] = seen + 1
            if seen:
                self.duplicate_charges += 1

    def count_status(self, status: int) -> None:
        """Count a response by its HTTP status."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
