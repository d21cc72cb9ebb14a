"""The pricing table (model -> credits per image) and credit estimates."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import attrs

from .errors import InvalidRequestError
from .models import Job
from .validation import whole_problem

__all__ = ["DEFAULT_PRICES", "DEFAULT_PRICING", "CreditEstimate", "PricingTable", "as_job"]

DEFAULT_PRICES: Mapping[str, int] = MappingProxyType(
    {
        "gemini-2.5-flash-image": 2,
        "gemini-2.5-flash-image-hd": 5,
        "gemini-3.1-flash-image-preview-512": 4,
        "gemini-3.1-flash-image-preview": 4,
        "gemini-3.1-flash-image-preview-2k": 6,
        "gemini-3.1-flash-image-preview-4k": 8,
        "gemini-3-pro-image-preview": 8,
        "gemini-3-pro-image-preview-2k": 8,
        "gemini-3-pro-image-preview-4k": 16,
    }
)


def _freeze_prices(prices: Mapping[str, int]) -> Mapping[str, int]:
    if not isinstance(prices, Mapping):
        raise InvalidRequestError(
            f"pricing must map model names to credits per image, got {type(prices).__name__}",
            param="pricing",
        )
    frozen: dict[str, int] = {}
    for model, credits in prices.items():
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(
                f"pricing: model names must be non-empty strings, got {model!r}", param="pricing"
            )
        problem = whole_problem(credits, 0)
        if problem is not None:
            raise InvalidRequestError(f"pricing: credits for {model!r} {problem}", param="pricing")
        frozen[model] = credits
    return MappingProxyType(frozen)


@attrs.frozen
class CreditEstimate:
    """What a set of jobs will cost: ``total`` credits, ``by_model``, and counts."""

    total: int
    by_model: Mapping[str, int]
    jobs: int
    images: int


def as_job(job: Job | str, known_models: Mapping[str, int] | None = None) -> Job:
    """``job`` itself, or ``Job(prompt=job)`` for a plain string."""
    if isinstance(job, Job):
        return job
    if isinstance(job, str):
        return Job(job, pricing=known_models)
    raise InvalidRequestError(
        f"expected a Job or a prompt string, got {type(job).__name__}", param="job"
    )


@attrs.frozen
class PricingTable(Mapping[str, int]):
    """Credits per image for each model. Prices change: pass your own table to the client.

    ``PricingTable({...})`` replaces the built-in prices; :meth:`extend` adds to or overrides
    them; :meth:`from_file` reads a JSON object ``{"model": credits, ...}``. Models in the
    table are accepted by :class:`Job` and the client even if the SDK does not know them.
    """

    prices: Mapping[str, int] = attrs.field(converter=_freeze_prices)

    def __getitem__(self, model: str) -> int:
        return self.prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.prices)

    def __len__(self) -> int:
        return len(self.prices)

    def __contains__(self, model: object) -> bool:
        return model in self.prices

    def extend(self, prices: Mapping[str, int]) -> PricingTable:
        """A new table with ``prices`` added to (or overriding) this one."""
        return PricingTable({**self.prices, **_freeze_prices(prices)})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PricingTable:
        """Read a JSON object mapping model names to credits per image."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot read pricing file {os.fspath(path)!r}: {exc.strerror}", param="pricing"
            ) from None
        except ValueError as exc:
            raise InvalidRequestError(
                f"pricing file {os.fspath(path)!r} is not valid JSON: {exc}", param="pricing"
            ) from None
        return cls(data)

    def credits(self, job: Job) -> int:
        """Credits ``job`` costs: price per image times ``num``."""
        try:
            price = self.prices[job.model]
        except KeyError:
            raise InvalidRequestError(
                f"the pricing table has no price for model {job.model!r}; "
                "add it with PricingTable.extend()",
                param="model",
            ) from None
        return price * job.num

    def estimate(self, jobs: Iterable[Job | str]) -> CreditEstimate:
        """Add up what ``jobs`` cost, by model. Sends nothing."""
        by_model: dict[str, int] = {}
        count = images = 0
        for item in jobs:
            job = as_job(item, self)
            by_model[job.model] = by_model.get(job.model, 0) + self.credits(job)
            count += 1
            images += job.num
        return CreditEstimate(
            total=sum(by_model.values()),
            by_model=MappingProxyType(by_model),
            jobs=count,
            images=images,
        )


DEFAULT_PRICING = PricingTable(DEFAULT_PRICES)


def resolve_pricing(
    pricing: PricingTable | Mapping[str, int] | str | os.PathLike[str] | None,
) -> PricingTable:
    """The table a client uses: a PricingTable as given; a mapping or JSON file extends the
    built-in prices."""
    if pricing is None:
        return DEFAULT_PRICING
    if isinstance(pricing, PricingTable):
        return pricing
    if isinstance(pricing, str | os.PathLike):
        return DEFAULT_PRICING.extend(PricingTable.from_file(pricing))
    return DEFAULT_PRICING.extend(pricing)
