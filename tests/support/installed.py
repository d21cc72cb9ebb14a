"""The package as a user gets it from PyPI: the wheel built from this tree, in a fresh venv.

The wheel and the sdist are built offline (``python -m build --no-isolation``, hatchling from
the test extra). The venv gets the wheel, with its console script, and its dependencies from
the venv running the tests, linked in one by one: no index is needed, and an extra can be
left out (``hide``) to test an install without it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
from collections.abc import Sequence

import attrs

__all__ = ["Dist", "Installed", "build_dist", "install"]

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


@attrs.frozen
class Dist:
    wheel: pathlib.Path
    sdist: pathlib.Path


def build_dist(out: pathlib.Path) -> Dist:
    """Build the wheel and the sdist of this tree into ``out``."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel, sdist)


@attrs.frozen
class Installed:
    """A venv holding the wheel: run its console script with :meth:`run`."""

    root: pathlib.Path

    @property
    def script(self) -> pathlib.Path:
        return self.root / "bin" / "nanobanana"

    @property
    def python(self) -> pathlib.Path:
        return self.root / "bin" / "python"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NANOBANANA_", "PYTHON", "VIRTUAL_ENV"))
        }
        # Wide enough that rich never wraps a line the assertions look at.
        env.update(COLUMNS="160", PYTHONUNBUFFERED="1", PATH=f"{self.root / 'bin'}:/usr/bin:/bin")
        return env

    def run(
        self, *args: str, cwd: pathlib.Path, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``nanobanana ARGS`` from ``cwd`` (no checkout there), standard input closed."""
        return subprocess.run(
            [str(self.script), *args],
            cwd=cwd,
            env=self.env(),
            input="",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _ours(name: str) -> bool:
    # This package as the test venv has it (editable), pip, and start-up hooks (.pth files).
    lowered = name.lower()
    return (
        lowered.startswith(("nanobanana", "_nanobanana", "__editable__", "_editable_impl"))
        or lowered.endswith(".pth")
        or lowered == "pip"
        or lowered.startswith("pip-")
        or lowered == "__pycache__"
    )


def install(root: pathlib.Path, wheel: pathlib.Path, *, hide: Sequence[str] = ()) -> Installed:
    """A fresh venv at ``root`` with ``wheel`` and every distribution of the test venv but
    the packages named in ``hide`` (their import name and their ``.dist-info``)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(root / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site,) = root.glob("lib/python*/site-packages")
    ours = pathlib.Path(sysconfig.get_paths()["purelib"])
    hidden = tuple(name.lower() for name in hide)
    for entry in ours.iterdir():
        lowered = entry.name.lower()
        if _ours(entry.name) or any(
            lowered == h or lowered.startswith((f"{h}-", f"{h}.")) for h in hidden
        ):
            continue
        (site / entry.name).symlink_to(entry)
    return Installed(root)
