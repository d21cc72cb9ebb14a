"""Where a batch's images go: safe file names, unique across processes, and the downloads."""

from __future__ import annotations

import hashlib
import pathlib
import re

import anyio

from ..errors import NanoBananaError
from .sender import JobSender

__all__ = [
    "download_images",
    "file_stem",
    "image_filename",
    "in_directory",
    "safe_filename",
]

# Lower case only: two ids that differ in case must not meet on a case-insensitive file system.
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_MAX_NAME = 80


def file_stem(job_id: str) -> str:
    """The file-name stem for a job id: the id itself when it is a safe, short, lower-case
    name, else a sanitised prefix, ``~`` and a digest of the whole id.

    No two job ids share a stem, whoever names them: a stem taken as is never contains ``~``
    (nor ``+``, which numbers images), and a digest stem differs from every other one by its
    64-bit digest. Workers in other processes writing into the same directory therefore never
    take each other's names, without asking each other (or the directory) anything.
    """
    stem = _UNSAFE.sub("_", job_id.lower()).strip("._-") or "job"
    if stem != job_id or len(stem) > _MAX_NAME:
        # Sanitising maps many ids to one prefix; the digest of the real id keeps them apart.
        key = job_id.encode("utf-8", "surrogatepass")
        stem = f"{stem[:_MAX_NAME]}~{hashlib.blake2b(key, digest_size=8).hexdigest()}"
    return stem


def image_filename(stem: str, position: int, count: int, url: str) -> str:
    """The file name of image ``position`` of a job that asked for ``count`` images.

    ``<stem>.png`` for a job of one image, ``<stem>+1.png``, ``<stem>+2.png``… for a job of
    several, and for images the API returned beyond ``count``: no stem contains a ``+``, so
    the images of one job never take another job's name (job ``two``'s first image is
    ``two+1.png``; a job whose id is ``two-1`` saves ``two-1.png``).
    """
    suffix = pathlib.PurePosixPath(url.split("?", 1)[0]).suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        suffix = ".png"
    name = stem if count == 1 and position == 0 else f"{stem}+{position + 1}"
    return name + suffix


def in_directory(path: pathlib.Path, directory: pathlib.Path) -> bool:
    """Whether ``path`` is a file directly in ``directory``."""
    return path.parent.resolve() == directory.resolve()


def safe_filename(job_id: str, position: int, count: int, url: str) -> str:
    """A file name for image ``position`` of a job that cannot escape the directory."""
    return image_filename(file_stem(job_id), position, count, url)


async def download_images(
    sender: JobSender, directory: pathlib.Path, stem: str, urls: tuple[str, ...], num: int
) -> tuple[tuple[pathlib.Path, ...], NanoBananaError | None]:
    """Save a job that asked for ``num`` images as ``directory/stem...``: the saved paths, and
    an error if any image could not be saved.

    A failure is this job's, never the batch's: whatever an image URL does (a port out of
    range, a host no resolver takes, a disk that is full), the other images and jobs go on.
    """
    paths: list[pathlib.Path | None] = [None] * len(urls)
    errors: list[NanoBananaError] = []

    async def fetch(position: int, url: str) -> None:
        target = directory / image_filename(stem, position, num, url)
        try:
            paths[position] = await sender.download(url, target)
        except NanoBananaError as exc:
            errors.append(exc)
        except OSError as exc:
            errors.append(NanoBananaError(f"could not save {target}: {exc.strerror or exc}"))
        except Exception as exc:
            errors.append(NanoBananaError(f"could not download {url!r}: {exc!r}"))

    async with anyio.create_task_group() as tg:
        for position, url in enumerate(urls):
            tg.start_soon(fetch, position, url)
    saved = tuple(p for p in paths if p is not None)
    if errors:
        return saved, NanoBananaError(
            f"generated, but {len(errors)} of {len(urls)} image(s) could not be downloaded: "
            f"{errors[0]}"
        )
    return saved, None
