"""The emulator's live counters (:class:`EmulatorStats`)."""

from __future__ import annotations

import itertools
import time
from typing import Any, Final

import attrs

from .faults import FAULT_KINDS

__all__ = [
    "DEFAULT_PAGE",
    "MAX_GENERATE_RECORDS",
    "MAX_REQUEST_START_TIMES",
    "EmulatorStats",
    "GenerateRecord",
]

MAX_REQUEST_START_TIMES: Final = 100_000
MAX_GENERATE_RECORDS: Final = 100_000
#: Records per list that ``GET /_emulator/stats`` returns when not asked for a ``limit``.
DEFAULT_PAGE: Final = 1_000


@attrs.frozen
class GenerateRecord:
    """What one generate request was charged and answered: the attribution of a charge.

    Attributes:
        serial: the request's arrival number (1 for the first generate request since the
            stats were reset), the n of "the n-th request meets the n-th fault".
        prompt: the prompt of a valid request, else None.
        idempotency_key: its ``Idempotency-Key`` header, if any.
        credits: credits taken from the ledger for it (0 if none).
        images: images charged for (``num``, or fewer for a ``partial`` answer).
        urls: URLs in the success body built for it (0 when there was none).
        status: the HTTP status sent, None when no status line was sent (a drop, a client
            that left).
        answered: whether a complete response was sent (False for drops and cut bodies).
        client_left: the client hung up (or cancelled) before it was answered.
        faults: the fault kinds it met (keys of :attr:`EmulatorStats.faults`).
    """

    serial: int
    prompt: str | None = None
    idempotency_key: str | None = None
    credits: int = 0
    images: int = 0
    urls: int = 0
    status: int | None = None
    answered: bool = False
    client_left: bool = False
    faults: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``faults`` as a list)."""
        return {**attrs.asdict(self), "faults": list(self.faults)}


# What grows with every request: windowed by to_dict(limit=...).
_WINDOWED = (
    "generate_records",
    "request_start_times",
    "charged_idempotency_keys",
    "credits_by_idempotency_key",
)


def _no_faults() -> dict[str, int]:
    return dict.fromkeys(FAULT_KINDS, 0)


@attrs.define
class EmulatorStats:
    """Live counters of an :class:`Emulator` (``emulator.stats``; JSON at ``/_emulator/stats``,
    whose records come a page at a time: see :meth:`to_dict`).

    Attributes:
        requests: every HTTP request, whatever the route.
        generate_requests: ``POST /v1/images/generate`` requests, faulted or not.
        generations: generate requests charged and answered with a complete success
            (HTTP 200, ``code`` 0), its URLs possibly odd, bad, too few or too many.
        images_generated: the images charged for over ``generations`` (``num``, fewer for a
            ``partial`` answer).
        images_missing, images_extra: URLs fewer / more than ``num`` in the success bodies
            built for ``partial`` / ``extra`` answers.
        credits_charged: every credit taken from a ledger, including generations whose
            answer was then lost or broken (dropped, cut, truncated, sent with a 5xx, or
            nobody left to answer). Always equal to what the ledgers lost, and to the sum
            of ``credits`` over ``generate_records`` (while none were left out).
        charges: generate requests that were charged, whatever their answer.
        in_flight: generate requests being handled right now.
        max_in_flight: the most generate requests ever handled at once.
        faults: injected faults by kind (see :data:`FAULT_KINDS` and :class:`Faults`); a
            request can meet several (an outcome and modifiers). A drop planned after the
            charge of a request that was then refused (bad key, invalid, no credits, or a
            replay) charged nothing and counts as ``dropped_before_charge``.
        by_status: responses by HTTP status. Dropped connections have none; a cut body
            (``faults["cut_success"]``) counts under the status it was sent with.
        charged_idempotency_keys: ``Idempotency-Key`` header -> number of charged
            generations sent with it. More than 1 means a client paid twice. (JSON also
            carries ``idempotency_keys``, how many there are.)
        credits_by_idempotency_key: ``Idempotency-Key`` header -> credits charged under it.
        duplicate_charges: charged generations whose ``Idempotency-Key`` had already been
            charged before.
        idempotent_replays: requests answered from an earlier success without charging
            (only with ``honour_idempotency=True``; not counted in ``generations``).
        images_served: image downloads answered with a PNG.
        image_requests_with_authorization: image requests that carried an ``Authorization``
            header (an SDK should never send the API key to an image host).
        request_start_times: ``time.monotonic()`` at the start of each generate request, in
            arrival order; only the first 100 000 are kept so memory stays bounded.
        generate_records: a :class:`GenerateRecord` per generate request, in the order they
            finished (``serial`` gives the arrival order); only the first 100 000 are kept.
            A record is kept before its response ends, so a client holding its answer (or
            the error of a drop or cut) finds it here; a client that hung up may have to
            wait until the server notices.
    """

    requests: int = 0
    generate_requests: int = 0
    generations: int = 0
    images_generated: int = 0
    credits_charged: int = 0
    charges: int = 0
    images_missing: int = 0
    images_extra: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: dict[str, int] = attrs.field(factory=_no_faults)
    by_status: dict[int, int] = attrs.field(factory=dict)
    charged_idempotency_keys: dict[str, int] = attrs.field(factory=dict)
    credits_by_idempotency_key: dict[str, int] = attrs.field(factory=dict)
    duplicate_charges: int = 0
    idempotent_replays: int = 0
    images_served: int = 0
    image_requests_with_authorization: int = 0
    request_start_times: list[float] = attrs.field(factory=list)
    generate_records: list[GenerateRecord] = attrs.field(factory=list)

    def to_dict(self, *, offset: int | None = None, limit: int | None = None) -> dict[str, Any]:
        """A JSON-ready snapshot (``by_status`` keys become strings, as JSON needs).

        Every counter is complete. Without ``limit``, so are the four growing collections
        (``generate_records``, ``request_start_times``, ``charged_idempotency_keys``,
        ``credits_by_idempotency_key``). With it, each holds entries ``offset`` to ``offset +
        limit`` in the order it grew (without ``offset``: its last ``limit``), and ``page``
        says where that window is: ``offset``, ``limit``, ``sizes`` (each collection's
        length) and ``next`` (the ``offset`` of the following window, or None).
        """
        full = self._snapshot()
        if limit is None:
            return full
        sizes = {name: len(full[name]) for name in _WINDOWED}
        largest = max(sizes.values())
        start = max(0, largest - limit) if offset is None else offset
        for name in _WINDOWED:
            items = full[name]
            if isinstance(items, dict):
                full[name] = dict(itertools.islice(items.items(), start, start + limit))
            else:
                full[name] = items[start : start + limit]
        following = start + limit
        full["page"] = {
            "offset": start,
            "limit": limit,
            "sizes": sizes,
            "next": following if following < largest else None,
        }
        return full

    def _snapshot(self) -> dict[str, Any]:
        # dict() and list() copy in one step under the GIL, so reading from another thread
        # while the server thread counts cannot fail with "changed size during iteration".
        return {
            "requests": self.requests,
            "generate_requests": self.generate_requests,
            "generations": self.generations,
            "images_generated": self.images_generated,
            "credits_charged": self.credits_charged,
            "charges": self.charges,
            "images_missing": self.images_missing,
            "images_extra": self.images_extra,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults": dict(self.faults),
            "by_status": {str(k): v for k, v in dict(self.by_status).items()},
            "charged_idempotency_keys": dict(self.charged_idempotency_keys),
            "credits_by_idempotency_key": dict(self.credits_by_idempotency_key),
            "idempotency_keys": len(self.charged_idempotency_keys),
            "duplicate_charges": self.duplicate_charges,
            "idempotent_replays": self.idempotent_replays,
            "images_served": self.images_served,
            "image_requests_with_authorization": self.image_requests_with_authorization,
            "request_start_times": list(self.request_start_times),
            "generate_records": [record.to_dict() for record in list(self.generate_records)],
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
        self.charges += 1
        if idempotency_key is not None:
            seen = self.charged_idempotency_keys.get(idempotency_key, 0)
            self.charged_idempotency_keys[idempotency_key] = seen + 1
            credits = self.credits_by_idempotency_key.get(idempotency_key, 0)
            self.credits_by_idempotency_key[idempotency_key] = credits + cost
            if seen:
                self.duplicate_charges += 1

    def record(self, record: GenerateRecord) -> None:
        """Keep the record of a finished generate request (the first 100 000 only)."""
        if len(self.generate_records) < MAX_GENERATE_RECORDS:
            self.generate_records.append(record)

    def count_status(self, status: int) -> None:
        """Count a response by its HTTP status."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
