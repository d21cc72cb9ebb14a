"""What a generate request asks for, validated as the real API validates it."""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs

from .asgi import MAX_BODY_BYTES

__all__ = ["DEFAULT_MODEL", "GenerateRequest", "Refused", "validate"]

DEFAULT_MODEL = "gemini-2.5-flash-image"


@attrs.frozen
class GenerateRequest:
    """The fields of a valid ``POST /v1/images/generate`` body."""

    prompt: str
    num: int
    model: str
    image_size: str


class Refused(Exception):
    """The API refuses the request with this ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate(
    body: bytes,
    prices: Mapping[str, int],
    sizes: Mapping[str, frozenset[str]],
    max_num: int,
) -> GenerateRequest:
    """The request in ``body``, or :class:`Refused` with the API's code and message."""
    if len(body) > MAX_BODY_BYTES:
        raise Refused(400, "request body too large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "request body must be a JSON object")
    prompt = data.get("prompt")
    if prompt is None:
        raise Refused(400, "prompt is required")
    if not isinstance(prompt, str):
        raise Refused(400, "prompt must be a string")
    if not prompt.strip():
        raise Refused(400, "prompt must not be empty")
    num = data.get("num", 1)
    if isinstance(num, bool) or not isinstance(num, int):
        raise Refused(400, "num must be an integer")
    if not 1 <= num <= max_num:
        raise Refused(400, f"num must be between 1 and {max_num}")
    model = data.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or model not in prices:
        raise Refused(400, f"unknown model: {model}")
    size = data.get("image_size", "1:1")
    if not isinstance(size, str) or size not in sizes[model]:
        raise Refused(400, f"image_size {size} is not supported by {model}")
    return GenerateRequest(prompt, num, model, size)
