"""``nanobanana demo``: the main job without a checkout, offline.

The package ships a prompt set (``demo_prompts.txt``, the prompts of the repository's
``examples/prompts.txt``). The demo copies it to ``DIR/prompts.txt`` and runs ``nanobanana
batch`` on it against the in-process emulator: images, journal and gallery in DIR, no key, no
network. Running it again resumes; the copied file is there to edit and run with ``batch``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import pathlib
import shutil
from typing import Any

from . import cmd_batch
from .common import CLIError, add_common, make_dir, positive_int

__all__ = ["DEMO_PROMPTS", "add_parser", "cmd_demo"]

DEMO_PROMPTS = "demo_prompts.txt"
_DEFAULT_DIR = "nanobanana-demo"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``demo`` to the subcommands."""
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="generate the packaged demo prompts offline (emulator), with a gallery",
        description="Generate the demo prompts shipped with the package on the built-in "
        "emulator (no key, no network, no credits): images, journal and an index.html gallery "
        f"go to DIR ({_DEFAULT_DIR} by default), with the prompts copied to DIR/prompts.txt "
        "to edit and run with nanobanana batch. Running it again resumes.",
    )
    demo.add_argument(
        "-o", "--output", metavar="DIR", default=_DEFAULT_DIR, help=f"({_DEFAULT_DIR})"
    )
    demo.add_argument(
        "-c", "--concurrency", type=positive_int, default=8, help="requests in flight (8)"
    )
    demo.set_defaults(run=cmd_demo)


def _batch_args(args: argparse.Namespace, prompts: pathlib.Path) -> argparse.Namespace:
    """The arguments ``nanobanana batch PROMPTS --emulator --yes -o DIR`` would get: batch's
    own parser supplies every default, so the demo runs exactly what that command runs."""
    parser = argparse.ArgumentParser(add_help=False)
    common = argparse.ArgumentParser(add_help=False)
    add_common(common, default=argparse.SUPPRESS)
    cmd_batch.add_parser(parser.add_subparsers(dest="command"), common)
    batch = parser.parse_args(
        [
            "batch",
            str(prompts),
            "--emulator",
            "--yes",
            "-o",
            args.output,
            "-c",
            str(args.concurrency),
        ]
    )
    for name in ("api_key", "base_url", "pricing", "verbose"):
        setattr(batch, name, getattr(args, name, None))
    return batch


def cmd_demo(args: argparse.Namespace) -> int:
    out_dir = make_dir(args.output)
    prompts = out_dir / "prompts.txt"
    if not prompts.exists():  # a rerun keeps the user's edits
        source = importlib.resources.files(__package__).joinpath(DEMO_PROMPTS)
        try:
            with importlib.resources.as_file(source) as packaged:
                shutil.copyfile(packaged, prompts)
        except OSError as exc:
            raise CLIError(f"cannot write {prompts}: {exc.strerror or exc}") from None
    return cmd_batch.cmd_batch(_batch_args(args, prompts))
