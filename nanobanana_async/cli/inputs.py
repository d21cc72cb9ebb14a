"""Job files for the command line: a prompt a line (.txt), job objects (.jsonl), or .csv.

Every row is validated before anything is sent, and each problem is reported as
``file:line: what is wrong`` so a user can fix the file in one go.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Collection, Iterator, Mapping
from typing import IO, Literal

import attrs

from ..errors import InvalidRequestError
from ..models import BASE_SIZES, DEFAULT_MODEL, EXTENDED_SIZES, Job, sizes_for

__all__ = ["FIELDS", "InputError", "SourcedJob", "build_job", "detect_format", "read_jobs"]

Format = Literal["txt", "jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("txt", "jsonl", "csv")
FIELDS = ("prompt", "model", "image_size", "size", "num", "id")
_EXTENSIONS: Mapping[str, Format] = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}
# Listing every bad row of a million-line file helps nobody; the first few show the pattern.
MAX_REPORTED = 20


class InputError(Exception):
    """The job file cannot be used; ``problems`` holds one ``file:line: what`` entry each."""

    def __init__(self, problems: list[str], *, more: int = 0) -> None:
        self.problems = problems
        self.more = more
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        extra = [f"... and {self.more} more problem(s)"] if self.more else []
        return self.problems + extra


@attrs.frozen
class SourcedJob:
    """A job and the line of the file it came from (for messages about it)."""

    job: Job
    line: int


def detect_format(name: str, head: str) -> Format:
    """The format of a job file from its extension, else from its first non-blank line."""
    ext = os.path.splitext(name)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    for raw in head.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            return "jsonl" if line.startswith(("{", '"')) else "txt"
    return "txt"


def _field_text(value: object) -> str:
    return repr(value) if not isinstance(value, str) else repr(value[:60])


def build_job(
    prompt: object,
    model: object,
    size: object,
    num: object,
    job_id: object,
    known_models: Collection[str],
) -> Job:
    """Validate one job's fields with messages in the command line's terms (``--size``, not
    ``image_size``); raise :class:`InvalidRequestError`."""
    if isinstance(model, str) and model not in known_models:
        raise InvalidRequestError(
            f"unknown model {_field_text(model)} (run 'nanobanana models' for the list)",
            param="model",
        )
    if isinstance(model, str) and isinstance(size, str) and size not in sizes_for(model):
        raise InvalidRequestError(
            f"size {_field_text(size)} is not available for {model}; allowed: "
            + " ".join(sizes_for(model)),
            param="image_size",
        )
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    return Job(prompt, model, size, num, job_id, pricing=known_models)  # type: ignore[arg-type]


class _Reader:
    def __init__(
        self,
        label: str,
        known_models: Collection[str],
        model: str | None,
        size: str | None,
    ) -> None:
        self.label = label
        self.known_models = known_models
        self.model = model or DEFAULT_MODEL
        self.size = size
        self.problems: dict[str, list[int]] = {}
        self.more = 0
        self.ids: dict[str, int] = {}

    def problem(self, line: int, message: str) -> None:
        lines = self.problems.get(message)
        if lines is None:
            if len(self.problems) >= MAX_REPORTED:
                self.more += 1
                return
            lines = self.problems[message] = []
        lines.append(line)

    def report(self) -> list[str]:
        """One entry per distinct problem: a default that is wrong for every row is one line,
        not a million."""
        out = []
        for message, lines in self.problems.items():
            where = f"{self.label}:{lines[0]}"
            if len(lines) > 1:
                shown = ", ".join(str(n) for n in lines[1:4])
                extra = f" and {len(lines) - 4} more" if len(lines) > 4 else ""
                message = f"{message} (also lines {shown}{extra})"
            out.append(f"{where}: {message}")
        return out

    def make(self, line: int, fields: Mapping[str, object]) -> SourcedJob | None:
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            self.problem(
                line,
                f"unknown field {unknown[0]!r} "
                "(fields: prompt, model, image_size or size, num, id)",
            )
            return None
        if "prompt" not in fields:
            self.problem(line, "missing 'prompt'")
            return None
        image_size, size = fields.get("image_size"), fields.get("size")
        if image_size is not None and size is not None and image_size != size:
            self.problem(line, f"'image_size' {image_size!r} and 'size' {size!r} disagree")
            return None
        model = fields.get("model")
        model = self.model if model is None else model
        chosen = image_size if image_size is not None else size
        chosen = (self.size or "1:1") if chosen is None else chosen
        num = fields.get("num")
        try:
            job = build_job(
                fields["prompt"],
                model,
                chosen,
                1 if num is None else num,
                fields.get("id"),
                self.known_models,
            )
        except InvalidRequestError as exc:
            self.problem(line, exc.message)
            return None
        if job.id is not None:
            first = self.ids.setdefault(job.id, line)
            if first != line:
                self.problem(line, f"duplicate id {job.id!r} (first on line {first})")
                return None
        return SourcedJob(job, line)

    def txt(self, text: str) -> Iterator[SourcedJob]:
        for number, raw in enumerate(text.splitlines(), 1):
            prompt = raw.strip()
            if not prompt or prompt.startswith("#"):
                continue
            made = self.make(number, {"prompt": prompt})
            if made is not None:
                yield made

    def jsonl(self, text: str) -> Iterator[SourcedJob]:
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError as exc:
                self.problem(number, f"not valid JSON ({exc})")
                continue
            if isinstance(value, str):
                value = {"prompt": value}
            if not isinstance(value, dict):
                self.problem(number, f"expected a JSON object, got {type(value).__name__}")
                continue
            made = self.make(number, value)
            if made is not None:
                yield made

    def csv(self, text: str) -> Iterator[SourcedJob]:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            self.problem(reader.line_num, f"bad CSV ({exc})")
            return
        columns = [name.strip().lower() for name in header]
        unknown = [c for c in columns if c not in FIELDS]
        if unknown or "prompt" not in columns or len(set(columns)) != len(columns):
            what = (
                f"unknown column {unknown[0]!r}"
                if unknown
                else "duplicate column"
                if "prompt" in columns
                else "no 'prompt' column"
            )
            self.problem(
                1,
                f"{what}; the header row names columns: prompt, model, image_size or size, num, id",
            )
            return
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.problem(line, f"bad CSV ({exc})")
                return
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                self.problem(start, f"{len(row)} cells, but the header has {len(columns)}")
                continue
            fields: dict[str, object] = {}
            for name, cell in zip(columns, row, strict=True):
                cell = cell.strip()
                if cell:
                    fields[name] = cell
            if "num" in fields:
                num = str(fields["num"])
                if not num.isdigit():
                    self.problem(start, f"invalid num: must be an integer >= 1, got {num!r}")
                    continue
                fields["num"] = int(num)
            fields.setdefault("prompt", "")
            made = self.make(start, fields)
            if made is not None:
                yield made


def _read_text(path: str, stdin: IO[str] | None) -> tuple[str, str]:
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin
        return "<stdin>", stream.read()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        return path, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from None


def read_jobs(
    path: str,
    *,
    known_models: Collection[str],
    model: str | None = None,
    size: str | None = None,
    fmt: Format | None = None,
    stdin: IO[str] | None = None,
) -> list[SourcedJob]:
    """Read and validate every job of ``path`` (``-`` for standard input).

    ``model`` and ``size`` are the defaults for rows that do not name them. Raises
    :class:`InputError` listing the problems (the first :data:`MAX_REPORTED` of them) when any
    row is bad or the file holds no job.
    """
    if model is not None and model not in known_models:
        raise InputError(
            [f"--model: unknown model {model!r} (run 'nanobanana models' for the list)"]
        )
    if size is not None and size not in BASE_SIZES + EXTENDED_SIZES:
        raise InputError(
            [f"--size: unknown size {size!r}; sizes: " + " ".join(BASE_SIZES + EXTENDED_SIZES)]
        )
    label, text = _read_text(path, stdin)
    chosen = fmt or detect_format(path if path != "-" else "", text[:4096])
    reader = _Reader(label, known_models, model, size)
    jobs = list(getattr(reader, chosen)(text))
    if reader.problems:
        raise InputError(reader.report(), more=reader.more)
    if not jobs:
        raise InputError([f"{label}: no jobs found (expected {_describe(chosen)})"])
    return jobs


def _describe(fmt: Format) -> str:
    return {
        "txt": "a prompt a line; blank lines and # comments are skipped",
        "jsonl": 'one JSON object a line, like {"prompt": "a red fox"}',
        "csv": "a header row naming a 'prompt' column, then a row a job",
    }[fmt]
