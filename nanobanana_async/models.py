"""Jobs and generations, the model and size tables, and input validation."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs

from .errors import InvalidRequestError
from .validation import whole_problem

DEFAULT_MODEL = "gemini-2.5-flash-image"

MODELS: tuple[str, ...] = (
    "gemini-2.5-flash-image",
    "gemini-2.5-flash-image-hd",
    "gemini-3.1-flash-image-preview-512",
    "gemini-3.1-flash-image-preview",
    "gemini-3.1-flash-image-preview-2k",
    "gemini-3.1-flash-image-preview-4k",
    "gemini-3-pro-image-preview",
    "gemini-3-pro-image-preview-2k",
    "gemini-3-pro-image-preview-4k",
)

BASE_SIZES: tuple[str, ...] = ("1:1", "16:9", "9:16", "4:3", "3:4", "2:3", "3:2", "4:5", "5:4")
EXTENDED_SIZES: tuple[str, ...] = ("21:9", "1:4", "4:1", "8:1", "1:8")

# Only this model family takes the extreme aspect ratios; a custom model added through a pricing
# table follows the same naming rule, so a future "gemini-3.1-flash-*" model works unchanged.
_EXTENDED_PREFIX = "gemini-3.1-flash"


_ALL_SIZES = BASE_SIZES + EXTENDED_SIZES


def sizes_for(model: str) -> tuple[str, ...]:
    """The image sizes (aspect ratios) that ``model`` accepts."""
    return _ALL_SIZES if model.startswith(_EXTENDED_PREFIX) else BASE_SIZES


def _invalid(field: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"invalid {field}: {message}", param=field)


def validate_fields(
    prompt: object,
    model: object,
    image_size: object,
    num: object,
    known_models: Collection[str],
) -> None:
    """Raise :class:`InvalidRequestError` naming the first bad field and what is allowed."""
    if not isinstance(prompt, str):
        raise _invalid("prompt", f"expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise _invalid("prompt", "must not be empty or only whitespace")
    if "\x00" in prompt:
        raise _invalid("prompt", "must not contain NUL characters")
    if not _encodable(prompt):
        raise _invalid("prompt", "must be valid Unicode text (it contains a lone surrogate)")
    if not isinstance(model, str) or model not in known_models:
        allowed = ", ".join(sorted(known_models))
        raise _invalid(
            "model",
            f"unknown model {model!r}; known models: {allowed} "
            "(to use another model, pass a PricingTable that prices it)",
        )
    if not isinstance(image_size, str) or image_size not in sizes_for(model):
        raise _invalid(
            "image_size",
            f"{image_size!r} is not available for {model}; allowed: " + " ".join(sizes_for(model)),
        )
    problem = whole_problem(num, 1)
    if problem is not None:
        raise _invalid("num", problem)


def _encodable(text: str) -> bool:
    # A lone surrogate passes every other check but cannot be sent as UTF-8 JSON, written to
    # the journal or used in a file name.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Ids key rows in the job stores: Postgres refuses an index entry over ~2,700 bytes, and 512
# characters are at most 2,048 bytes of UTF-8 whatever they are.
MAX_ID_LENGTH = 512


def _check_id(value: object) -> None:
    if value is not None and (
        not isinstance(value, str) or not value or "\x00" in value or not _encodable(value)
    ):
        raise _invalid(
            "id", f"must be a non-empty string of valid Unicode without NUL, got {value!r}"
        )
    if value is not None and len(value) > MAX_ID_LENGTH:
        raise _invalid(
            "id",
            f"must be at most {MAX_ID_LENGTH} characters, got {len(value)} "
            f"({value[:40]!r}...): use a shorter id, or a digest of this one",
        )


@attrs.frozen(init=False)
class Job:
    """One generation request: a prompt and how to render it.

    Validated at construction: a bad field raises :class:`InvalidRequestError` (also a
    ``ValueError``) before any byte is sent. ``id`` names the job in journals and file names (at
    most 512 characters); without one, the batch runner derives a stable id from the fields.

    A model that is not in the built-in table is accepted when ``pricing`` (a
    :class:`~nanobanana_async.PricingTable`) prices it. ``pricing`` only takes part in
    validation: it is not stored.
    """

    prompt: str
    model: str = DEFAULT_MODEL
    image_size: str = "1:1"
    num: int = 1
    id: str | None = None

    def __init__(
        self,
        prompt: str,
        model: str = DEFAULT_MODEL,
        image_size: str = "1:1",
        num: int = 1,
        id: str | None = None,
        *,
        pricing: Collection[str] | None = None,
    ) -> None:
        validate_fields(prompt, model, image_size, num, MODELS if pricing is None else pricing)
        _check_id(id)
        self.__attrs_init__(prompt, model, image_size, num, id)

    def to_body(self) -> dict[str, Any]:
        """The JSON body the API expects for this job."""
        return {
            "prompt": self.prompt,
            "num": self.num,
            "model": self.model,
            "image_size": self.image_size,
        }


@attrs.frozen
class Generation:
    """A finished generation: the image URLs (always a tuple) and what it cost.

    ``num`` is what was asked for; the API may answer with fewer URLs (``partial``: credits
    are charged per image generated, so ``credits`` follows the images returned) or more
    (``extra_images``: kept, and charged as asked).
    """

    urls: tuple[str, ...]
    model: str
    image_size: str
    num: int
    credits: int
    elapsed: float

    @property
    def partial(self) -> bool:
        """The API returned fewer images than asked for."""
        return len(self.urls) < self.num

    @property
    def extra_images(self) -> int:
        """How many more images than asked for the API returned (0 normally)."""
        return max(0, len(self.urls) - self.num)
