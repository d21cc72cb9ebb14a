"""``nanobanana generate``: one prompt, URLs on stdout, images optionally saved."""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import uuid
from typing import Any

from ..errors import InvalidRequestError
from ..models import DEFAULT_MODEL
from .common import (
    EXIT_OK,
    ClientConfig,
    CLIError,
    add_job_defaults,
    add_limits,
    console,
    make_dir,
    out,
    positive_float,
    positive_int,
    pricing_of,
    setup_logging,
)
from .inputs import build_job

__all__ = ["add_parser", "cmd_generate"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``generate`` to the subcommands."""
    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="generate images for one prompt",
        description="Generate images for one prompt; prints the URLs on stdout.",
    )
    gen.add_argument("prompt", metavar="PROMPT", help="the prompt (- reads it from stdin)")
    add_job_defaults(gen, rows=False)
    gen.add_argument("-n", "--num", type=positive_int, default=1, help="images (default: 1)")
    gen.add_argument("-o", "--output", metavar="DIR", help="download the images into DIR")
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    gen.add_argument(
        "--emulator", action="store_true", help="use the built-in emulator (no key needed)"
    )
    gen.add_argument("--timeout", type=positive_float, help="read timeout in seconds")
    add_limits(gen)
    gen.set_defaults(run=cmd_generate)


_SLUG = re.compile(r"[^a-z0-9]+")


def _slug(prompt: str) -> str:
    return _SLUG.sub("-", prompt.lower())[:40].strip("-") or "image"


def cmd_generate(args: argparse.Namespace) -> int:
    import asyncio

    from rich.markup import escape
    from rich.text import Text

    from ..batch.files import safe_filename

    pricing = pricing_of(args)
    prompt = sys.stdin.read().strip() if args.prompt == "-" else args.prompt
    try:
        job = build_job(
            prompt, args.model or DEFAULT_MODEL, args.size or "1:1", args.num, None, pricing
        )
    except InvalidRequestError as exc:
        raise CLIError(exc.message) from None
    config = ClientConfig.from_args(args, pricing)
    out_dir = make_dir(args.output) if args.output else None
    err = console(stderr=True)
    setup_logging(args.verbose, err)

    async def run() -> tuple[Any, list[pathlib.Path]]:
        async with config.open() as client:
            with err.status("generating…"):
                generation = await client.generate(job)
                paths: list[pathlib.Path] = []
                if out_dir is not None:
                    stem = f"{_slug(job.prompt)}-{uuid.uuid4().hex[:6]}"
                    for i, url in enumerate(generation.urls):
                        name = safe_filename(stem, i, generation.num, url)
                        paths.append(await client.download(url, out_dir / name))
            return generation, paths

    generation, paths = asyncio.run(run())
    if args.json:
        out(
            json.dumps(
                {
                    "urls": list(generation.urls),
                    "paths": [str(p) for p in paths],
                    "model": generation.model,
                    "image_size": generation.image_size,
                    "num": generation.num,
                    "images": len(generation.urls),
                    "partial": generation.partial,
                    "credits": generation.credits,
                    "elapsed": round(generation.elapsed, 3),
                }
            )
        )
    else:
        for url in generation.urls:
            out(url)
    # What came back, not what was asked: the API may answer with fewer images (charged per
    # image returned) or more.
    got = len(generation.urls)
    images = f"{got} image" if got == 1 else f"{got} images"
    if generation.partial:
        images += f" (partial: {generation.num} asked)"
    err.print(
        f"{images} · {escape(generation.model)} · {generation.image_size} · "
        f"[bold]{generation.credits} credits[/] · {generation.elapsed:.1f} s"
        + (" (emulator)" if config.emulator else "")
    )
    for path in paths:
        err.print(Text(f"saved {path}"))
    if config.emulator and not paths:
        # The in-process emulator's image URLs die with this process.
        err.print("add -o DIR to keep the images: emulator URLs stop working when this exits")
    return EXIT_OK
