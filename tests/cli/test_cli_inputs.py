"""Job files: formats, defaults, line numbers in messages (in-process, fast)."""

from __future__ import annotations

import io
import pathlib

import pytest

from nanobanana_async import DEFAULT_PRICING
from nanobanana_async.cli.inputs import MAX_REPORTED, InputError, detect_format, read_jobs


def read(
    path: pathlib.Path, text: str, model: str | None = None, size: str | None = None
) -> list[tuple[int, str, str, str, int]]:
    path.write_bytes(text.encode("utf-8"))
    jobs = read_jobs(str(path), known_models=DEFAULT_PRICING, model=model, size=size)
    return [(s.line, s.job.prompt, s.job.model, s.job.image_size, s.job.num) for s in jobs]


def problems(path: pathlib.Path, text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        read(path, text)
    return caught.value.lines()


def test_txt_skips_blanks_and_comments_and_keeps_line_numbers(tmp_path: pathlib.Path) -> None:
    jobs = read(tmp_path / "p.txt", "\ufeff# head\n\n  a fox  \n\t# indented comment\nb cat\n")
    assert jobs == [
        (3, "a fox", "gemini-2.5-flash-image", "1:1", 1),
        (5, "b cat", "gemini-2.5-flash-image", "1:1", 1),
    ]


def test_csv_records_over_several_lines_report_their_first_line(tmp_path: pathlib.Path) -> None:
    text = 'prompt,num\n"two\nlines",1\nok,2\n"bad",zero\n'
    assert problems(tmp_path / "p.csv", text) == [
        "{}:5: invalid num: must be an integer >= 1, got 'zero'".format(tmp_path / "p.csv")
    ]
    jobs = read(tmp_path / "q.csv", 'Prompt , Size\n"two\nlines",\nok,4:3\n')
    assert [(line, prompt, size) for line, prompt, _, size, _ in jobs] == [
        (2, "two\nlines", "1:1"),
        (4, "ok", "4:3"),
    ]


def test_defaults_apply_only_where_a_row_names_nothing(tmp_path: pathlib.Path) -> None:
    text = (
        '{"prompt": "a"}\n'
        '{"prompt": "b", "model": "gemini-2.5-flash-image", "image_size": "3:2"}\n'
        '{"prompt": "c", "size": "1:1", "image_size": "1:1", "id": 7}\n'
    )
    jobs = read(tmp_path / "p.jsonl", text, model="gemini-3.1-flash-image-preview", size="8:1")
    assert [j[2:4] for j in jobs] == [
        ("gemini-3.1-flash-image-preview", "8:1"),
        ("gemini-2.5-flash-image", "3:2"),
        ("gemini-3.1-flash-image-preview", "1:1"),
    ]


def test_disagreeing_sizes_and_bad_types(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.jsonl"
    text = (
        '{"prompt": "a", "size": "1:1", "image_size": "4:3"}\n'
        '{"prompt": 5}\n'
        '{"prompt": "c", "num": "2"}\n'
        '{"prompt": "d", "id": ""}\n'
    )
    found = problems(path, text)
    assert found[0] == f"{path}:1: 'image_size' '4:3' and 'size' '1:1' disagree"
    assert found[1].startswith(f"{path}:2: invalid prompt: expected a string")
    assert found[2].startswith(f"{path}:3: invalid num")
    assert found[3].startswith(f"{path}:4: invalid id")


def test_many_distinct_problems_are_capped(tmp_path: pathlib.Path) -> None:
    text = "".join(f'{{"prompt": "p", "num": -{i}}}\n' for i in range(1, MAX_REPORTED + 6))
    found = problems(tmp_path / "p.jsonl", text)
    assert len(found) == MAX_REPORTED + 1
    assert found[-1] == "... and 5 more problem(s)"


def test_not_utf8_and_unknown_extension(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(InputError) as caught:
        read_jobs(str(path), known_models=DEFAULT_PRICING)
    assert caught.value.lines() == [f"{path}: not UTF-8 text (bad byte at offset 3)"]
    assert detect_format("jobs", '\n# c\n{"prompt": "x"}') == "jsonl"
    assert detect_format("jobs.data", "a prompt") == "txt"
    assert detect_format("JOBS.CSV", "{") == "csv"


def test_stdin(tmp_path: pathlib.Path) -> None:
    jobs = read_jobs("-", known_models=DEFAULT_PRICING, stdin=io.StringIO("x\n\ny\n"))
    assert [s.line for s in jobs] == [1, 3]
    with pytest.raises(InputError, match="<stdin>:1: not valid JSON"):
        read_jobs("-", known_models=DEFAULT_PRICING, fmt="jsonl", stdin=io.StringIO("x\n"))
