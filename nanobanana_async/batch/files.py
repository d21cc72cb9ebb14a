"""Where a batch's images go: safe, collision-free file names and the downloads."""

from __future__ import annotations

import hashlib
import pathlib
import re

import anyio

from ..errors import NanoBananaError
from .digests import DigestSet
from .sender import JobSender

__all__ = [
    "FileNames",
    "download_images",
    "file_stem",
    "image_filename",
    "in_directory",
    "safe_filename",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_MAX_NAME = 80


def file_stem(job_id: str, salt: int = 0) -> str:
    """The file-name stem for a job id: the id itself when it is a safe, short name, else a
    sanitised prefix plus a hash of the id (``salt`` picks another hash)."""
    stem = _UNSAFE.sub("_", job_id).strip("._") or "job"
    if stem != job_id or len(stem) > _MAX_NAME or salt:
        # Sanitising can map two ids to one name; a hash of the real id keeps them apart.
        key = job_id if not salt else f"{job_id}\x00{salt}"
        digest = hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
        stem = f"{stem[:_MAX_NAME]}-{digest}"
    return stem


def _image_stems(stem: str, count: int) -> list[str]:
    return [f"{stem}-{i + 1}" for i in range(count)] if count > 1 else [stem]


def image_filename(stem: str, position: int, count: int, url: str) -> str:
    """The file name of image ``position`` of a job that asked for ``count`` images.

    Images the API returned beyond ``count`` are named ``<stem>+<n>``: no stem contains a
    ``+`` (:func:`file_stem` replaces it), so they can never take another job's name.
    """
    suffix = pathlib.PurePosixPath(url.split("?", 1)[0]).suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        suffix = ".png"
    name = _image_stems(stem, count)[position] if position < count else f"{stem}+{position + 1}"
    return name + suffix


def in_directory(path: pathlib.Path, directory: pathlib.Path) -> bool:
    """Whether ``path`` is a file directly in ``directory``."""
    return path.parent.resolve() == directory.resolve()


def safe_filename(job_id: str, position: int, count: int, url: str) -> str:
    """A file name for image ``position`` of a job that cannot escape the directory."""
    return image_filename(file_stem(job_id), position, count, url)


class FileNames:
    """Gives each job of a batch a stem no other image of the batch uses.

    Job ``two`` with two images saves ``two-1.png`` and ``two-2.png``; a job whose id is
    literally ``two-1`` must not overwrite the first, so it gets a hashed stem instead. Stems
    are claimed in input order, so a rerun of the same input names every file the same way.
    """

    def __init__(self) -> None:
        self._taken = DigestSet()  # 8 bytes a name: a million jobs stay small

    def claim(self, job_id: str, count: int) -> str:
        salt = 0
        stem = file_stem(job_id)
        while any(s in self._taken for s in _image_stems(stem, count)):
            salt += 1
            stem = file_stem(job_id, salt)
        for taken in _image_stems(stem, count):
            self._taken.add(taken)
        return stem


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
