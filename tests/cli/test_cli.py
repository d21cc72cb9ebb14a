"""The ``nanobanana`` command line, driven as a subprocess on real files.

Fast checks use ``--emulator`` (in-process, no key). Resume, interruption and the
``emulator`` command run against a real loopback emulator whose ``/_emulator/stats`` counts
the requests that reached it.
"""

from __future__ import annotations

import json
import os
import pathlib
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from nanobanana_async import DEFAULT_PRICING, sizes_for

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
PROMPTS = ROOT / "examples" / "prompts.txt"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    # Wide enough that rich never wraps a table cell the assertions look at.
    env.update(COLUMNS="160", PYTHONUNBUFFERED="1", **extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nanobanana_async", *args]


def run_cli(
    *args: str,
    cwd: pathlib.Path,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        cwd=cwd,
        input=input if input is not None else "",
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A user mistake: the expected exit status, no traceback, the message on stderr."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def journal_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_records(path: pathlib.Path) -> list[dict[str, Any]]:
    """The last journal line of each job: a job is journaled "generated" the moment its answer
    is read, then again once its files land."""
    return list({r["id"]: r for r in journal_lines(path)}.values())


def stored_rows(out: pathlib.Path) -> list[dict[str, Any]]:
    """Every job of the journal a batch keeps with ``-o out`` (``out/journal.db``, SQLite), in
    input order: ``state`` (``done``, ``failed``, ``skipped``...), ``files``, ``prompt``..."""
    import anyio

    from nanobanana_async.batch.stores import SqliteStore

    assert (out / "journal.db").is_file(), sorted(p.name for p in out.iterdir())
    store = SqliteStore(out / "journal.db")

    async def read() -> list[dict[str, Any]]:
        return [row async for row in store.rows()]

    return anyio.run(read)


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- models and estimate --------------------------------------------------------------------


def test_models_lists_every_model_with_credits_and_sizes(tmp_path: pathlib.Path) -> None:
    proc = run_cli("models", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["model"]: r["credits_per_image"] for r in rows} == dict(DEFAULT_PRICING)
    for row in rows:
        assert tuple(row["sizes"]) == sizes_for(row["model"])

    table = run_cli("models", cwd=tmp_path)
    assert table.returncode == 0
    for model, credits in DEFAULT_PRICING.items():
        line = next(line for line in table.stdout.splitlines() if f" {model} " in line)
        assert f" {credits} " in line
    assert "21:9" in next(line for line in table.stdout.splitlines() if "3.1-flash" in line)


def test_estimate_each_format_by_model(tmp_path: pathlib.Path) -> None:
    txt = write(tmp_path / "p.txt", "# comment\n\na fox\n  a cat  \n# another\na dog\n")
    jsonl = write(
        tmp_path / "p.jsonl",
        '{"prompt": "a fox"}\n'
        "\n"
        '{"prompt": "a cat", "model": "gemini-3-pro-image-preview-4k", "num": 2}\n'
        '"a plain string is a prompt"\n',
    )
    csv_file = write(
        tmp_path / "p.csv",
        'prompt,model,size,num\na fox,,,\n"a cat, with a comma",gemini-2.5-flash-image-hd,16:9,3\n',
    )
    cases = [
        (txt, {"gemini-2.5-flash-image": 6}, 3, 3),
        (jsonl, {"gemini-2.5-flash-image": 4, "gemini-3-pro-image-preview-4k": 32}, 3, 4),
        (csv_file, {"gemini-2.5-flash-image": 2, "gemini-2.5-flash-image-hd": 15}, 2, 4),
    ]
    for path, by_model, jobs, images in cases:
        proc = run_cli("estimate", path.name, "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result == {
            "total": sum(by_model.values()),
            "by_model": by_model,
            "jobs": jobs,
            "images": images,
        }

    table = run_cli("estimate", "p.jsonl", cwd=tmp_path)
    assert table.returncode == 0
    assert "gemini-3-pro-image-preview-4k" in table.stdout
    assert "36" in table.stdout.splitlines()[-3]  # the total row
    assert "No request was sent" in table.stdout


def test_estimate_reads_stdin_and_applies_model_and_size_defaults(tmp_path: pathlib.Path) -> None:
    proc = run_cli(
        "estimate",
        "-",
        "--json",
        "--model",
        "gemini-3.1-flash-image-preview",
        "--size",
        "21:9",
        cwd=tmp_path,
        input="one\ntwo\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["by_model"] == {"gemini-3.1-flash-image-preview": 8}
    as_jsonl = run_cli("estimate", "-", "--json", cwd=tmp_path, input='{"prompt": "x", "num": 3}')
    assert json.loads(as_jsonl.stdout)["images"] == 3
    as_csv = run_cli(
        "estimate", "-", "--format", "csv", "--json", cwd=tmp_path, input="prompt\nx\ny\n"
    )
    assert json.loads(as_csv.stdout)["jobs"] == 2


# -- input mistakes: one clear line each, exit 2, nothing sent ------------------------------


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        (
            "bad.jsonl",
            '{"prompt": "ok"}\n\n{"prompt": "missing brace"\n',
            ["bad.jsonl:3: not valid JSON"],
        ),
        ("model.jsonl", '{"prompt": "x", "model": "dall-e"}\n', ["model.jsonl:1: unknown model"]),
        (
            "size.jsonl",
            '{"prompt": "x"}\n{"prompt": "y", "size": "21:9"}\n',
            ["size.jsonl:2: size '21:9' is not available for gemini-2.5-flash-image"],
        ),
        ("num.jsonl", '{"prompt": "x", "num": 0}\n', ["num.jsonl:1: invalid num"]),
        ("typo.jsonl", '{"promt": "x"}\n', ["typo.jsonl:1: unknown field 'promt'"]),
        ("list.jsonl", "[1, 2]\n", ["list.jsonl:1: expected a JSON object"]),
        (
            "dup.jsonl",
            '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n',
            ["dup.jsonl:2: duplicate id 'x' (first on line 1)"],
        ),
        ("cols.csv", "text,model\nhello,\n", ["cols.csv:1: unknown column 'text'"]),
        ("cells.csv", "prompt,num\nhello,1\nbye,1,extra\n", ["cells.csv:3: 3 cells"]),
        ("num.csv", "prompt,num\nhello,two\n", ["num.csv:2: invalid num"]),
        ("empty.txt", "# only a comment\n\n", ["empty.txt: no jobs found"]),
        ("blank.jsonl", '{"prompt": "   "}\n', ["blank.jsonl:1: invalid prompt"]),
    ],
)
def test_bad_input_is_one_line_per_problem(
    tmp_path: pathlib.Path, name: str, content: str, needles: Sequence[str]
) -> None:
    write(tmp_path / name, content)
    for cmd in (["estimate", name], ["batch", name, "--emulator", "--yes", "-o", "out"]):
        proc = run_cli(*cmd, cwd=tmp_path)
        assert_clean_error(proc, 2, *needles)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("nanobanana: error: ")
    assert not (tmp_path / "out").exists()


def test_one_bad_default_is_reported_once_not_per_row(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(50)))
    proc = run_cli("estimate", "p.txt", "--size", "8:1", cwd=tmp_path)
    assert_clean_error(proc, 2, "p.txt:1: size '8:1' is not available", "and 46 more")
    assert len(proc.stderr.splitlines()) == 1
    unknown = run_cli("estimate", "p.txt", "--model", "nope", cwd=tmp_path)
    assert_clean_error(unknown, 2, "--model: unknown model 'nope'", "nanobanana models")


def test_missing_file_and_bad_flags(tmp_path: pathlib.Path) -> None:
    missing = run_cli("batch", "nope.txt", "--emulator", "--yes", cwd=tmp_path)
    assert_clean_error(missing, 2, "cannot read nope.txt: No such file or directory")
    bad_flag = run_cli("batch", "nope.txt", "-c", "0", cwd=tmp_path)
    assert_clean_error(bad_flag, 2, "must be at least 1")
    no_command = run_cli(cwd=tmp_path)
    assert_clean_error(no_command, 2, "required")
    bad_size = run_cli("generate", "x", "--emulator", "--size", "7:7", cwd=tmp_path)
    assert_clean_error(bad_size, 2, "size '7:7' is not available")
    exclusive = run_cli(
        "generate", "x", "--emulator", "--base-url", "http://127.0.0.1:1", cwd=tmp_path
    )
    assert_clean_error(exclusive, 2, "--emulator")


def test_missing_key_says_what_to_do(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\n")
    for cmd in (["generate", "a fox"], ["batch", "p.txt", "--yes"]):
        proc = run_cli(*cmd, cwd=tmp_path)
        assert_clean_error(proc, 2, "NANOBANANA_API_KEY", "--emulator")


# -- generate --------------------------------------------------------------------------------


def test_generate_prints_urls_and_credits(tmp_path: pathlib.Path) -> None:
    proc = run_cli(
        "generate", "a red fox", "--emulator", "-n", "2", "--model", "gemini-2.5-flash-image-hd",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    urls = proc.stdout.split()
    assert len(urls) == 2
    assert all(u.startswith("http") for u in urls)
    assert "10 credits" in proc.stderr
    assert "gemini-2.5-flash-image-hd" in proc.stderr
    assert "add -o DIR to keep the images" in proc.stderr


def test_generate_downloads_with_o_and_prints_json(tmp_path: pathlib.Path) -> None:
    proc = run_cli(
        "generate", "a tall tower", "--emulator", "--size", "9:16", "-o", "imgs", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["credits"] == 2
    assert result["image_size"] == "9:16"
    [path] = [tmp_path / p for p in result["paths"]]
    assert path.parent == tmp_path / "imgs"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert f"saved {result['paths'][0]}" in proc.stderr
    assert "keep the images" not in proc.stderr


def test_generate_reads_the_prompt_from_stdin(tmp_path: pathlib.Path) -> None:
    proc = run_cli("generate", "-", "--emulator", cwd=tmp_path, input="a boat at dawn\n")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 1


# -- batch -----------------------------------------------------------------------------------


def test_batch_txt_with_output_dir(tmp_path: pathlib.Path) -> None:
    proc = run_cli("batch", str(PROMPTS), "--emulator", "-o", "out", "--yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    prompts = [
        line.strip()
        for line in PROMPTS.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert len(prompts) >= 24
    out = tmp_path / "out"
    # The journal is SQLite by default: kill-safe, flat in memory.
    assert not (out / "journal.jsonl").exists()
    records = stored_rows(out)
    assert sorted(r["prompt"] for r in records) == sorted(prompts)
    assert {r["state"] for r in records} == {"done"}
    for record in records:
        [path] = record["files"]
        assert (tmp_path / path).read_bytes().startswith(PNG_MAGIC)
    assert (out / "index.html").is_file()
    # Machine-readable output only: with -o the images and journal carry the results.
    assert proc.stdout == ""
    assert "Estimate for" in proc.stderr
    assert f"{2 * len(prompts)} spent" in proc.stderr
    assert "succeeded" in proc.stderr
    assert "out/index.html" in proc.stderr


def test_batch_without_output_prints_urls_on_stdout(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.jsonl", '{"prompt": "a", "num": 3}\n{"prompt": "b"}\n')
    proc = run_cli("batch", "p.jsonl", "--emulator", "--yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    urls = proc.stdout.split()
    assert len(urls) == 4
    assert len(set(urls)) == 4


def test_batch_jsonl_fields_defaults_and_ids(tmp_path: pathlib.Path) -> None:
    write(
        tmp_path / "jobs.jsonl",
        '{"prompt": "wide", "id": "wide-1", "size": "21:9"}\n'
        '{"prompt": "pro", "id": "pro", "model": "gemini-3-pro-image-preview", '
        '"image_size": "4:3"}\n'
        '{"prompt": "two", "id": "two", "num": 2}\n',
    )
    proc = run_cli(
        "batch", "jobs.jsonl", "--emulator", "-o", "out", "--yes", "--json",
        "--model", "gemini-3.1-flash-image-preview", "--size", "16:9",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert printed["wide-1"]["model"] == "gemini-3.1-flash-image-preview"
    assert printed["wide-1"]["image_size"] == "21:9"
    assert printed["pro"]["model"] == "gemini-3-pro-image-preview"
    assert printed["pro"]["image_size"] == "4:3"
    assert printed["two"]["image_size"] == "16:9"
    assert printed["two"]["line"] == 3
    assert len(printed["two"]["paths"]) == 2
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["pro.png", "two+1.png", "two+2.png", "wide-1.png"]
    assert {r["id"] for r in stored_rows(tmp_path / "out")} == set(printed)


def test_batch_csv_and_custom_journal(tmp_path: pathlib.Path) -> None:
    write(
        tmp_path / "jobs.csv",
        "id,prompt,size,num\n"
        'fox,"a fox, in snow",16:9,\n'
        'cat,"a cat\nover two lines",,2\n'
        "\n"
        "owl,an owl,3:4,1\n",
    )
    proc = run_cli(
        "batch", "jobs.csv", "--emulator", "--yes", "--journal", "runs/j.jsonl", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    records = {r["id"]: r for r in journal_lines(tmp_path / "runs" / "j.jsonl")}
    assert records["fox"]["prompt"] == "a fox, in snow"
    assert records["cat"]["prompt"] == "a cat\nover two lines"
    assert records["cat"]["num"] == 2
    assert records["owl"]["image_size"] == "3:4"
    assert len(proc.stdout.split()) == 4


def test_batch_refuses_without_a_terminal_or_yes(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\na cat\n")
    proc = run_cli("batch", "p.txt", "--emulator", "-o", "out", cwd=tmp_path)
    assert_clean_error(proc, 2, "refusing to spend 4 credits", "--yes", "--max-credits")
    assert not (tmp_path / "out").exists()
    piped = run_cli("batch", "-", "--emulator", cwd=tmp_path, input="a fox\n")
    assert_clean_error(piped, 2, "refusing to spend 2 credits")


def _run_on_a_terminal(args: Sequence[str], cwd: pathlib.Path, answer: bytes) -> tuple[int, str]:
    """Run with a pseudo-terminal on stdin, answer the confirmation prompt, return
    (exit status, stderr)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        command(*args),
        cwd=cwd,
        env=cli_env(),
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, seen.decode()
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, seen.decode()
                seen += chunk
        os.write(leader, answer)
        _, rest = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, (seen + rest).decode()


def test_batch_asks_on_a_terminal_and_yes_runs(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\na cat\na dog\n")
    code, err = _run_on_a_terminal(["batch", "p.txt", "--emulator", "-o", "out"], tmp_path, b"y\n")
    assert code == 0, err
    assert "Spend up to 6 emulated credits on 3 jobs? [y/N]" in err
    assert len(stored_rows(tmp_path / "out")) == 3


def test_batch_asks_on_a_terminal_and_no_sends_nothing(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\na cat\n")
    code, err = _run_on_a_terminal(["batch", "p.txt", "--emulator", "-o", "out"], tmp_path, b"n\n")
    assert code == 1, err
    assert "Cancelled: nothing was sent" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_max_credits_skips_what_does_not_fit_without_asking(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(5)))
    proc = run_cli("batch", "p.txt", "--emulator", "-o", "out", "--max-credits", "6", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    states = sorted(r["state"] for r in stored_rows(tmp_path / "out"))
    assert states == ["done", "done", "done", "skipped", "skipped"]
    assert "6 spent" in proc.stderr
    assert "over budget" in (tmp_path / "out" / "index.html").read_text()


def test_output_dir_that_is_a_file_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\n")
    write(tmp_path / "taken", "")
    proc = run_cli("batch", "p.txt", "--emulator", "--yes", "-o", "taken", cwd=tmp_path)
    assert_clean_error(proc, 2, "cannot create output directory taken")


def test_console_script_is_installed() -> None:
    script = pathlib.Path(sys.executable).parent / "nanobanana"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (package not installed)")
    proc = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=False, env=cli_env()
    )
    assert proc.returncode == 0
    for name in ("generate", "batch", "estimate", "models", "emulator"):
        assert name in proc.stdout


# -- against a loopback emulator: keys, resume, interruption ----------------------------------


@pytest.fixture
def server() -> Iterator[str]:
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import Emulator, Faults, serve

    emulator = Emulator(
        keys={"sk-test-0123456789abcdef": 10_000}, faults=Faults(latency=0.05), seed=1
    )
    with serve(emulator, "127.0.0.1", 0) as running:
        yield str(running.base_url)


def stats(base_url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{base_url}/_emulator/stats").json()
    return data


def generate_requests(base_url: str) -> int:
    count = stats(base_url)["generate_requests"]
    assert isinstance(count, int)
    return count


KEY = "sk-test-0123456789abcdef"


def test_wrong_key_fails_cleanly_and_is_never_printed(tmp_path: pathlib.Path, server: str) -> None:
    secret = "sk-wrong-key-that-must-not-leak-42"
    write(tmp_path / "p.txt", "a fox\na cat\n")
    gen = run_cli("--base-url", server, "--api-key", secret, "generate", "a fox", cwd=tmp_path)
    assert_clean_error(gen, 1)
    assert len(gen.stderr.splitlines()) == 1
    env = cli_env(NANOBANANA_API_KEY=secret, NANOBANANA_BASE_URL=server)
    batch = run_cli("batch", "p.txt", "--yes", "-o", "out", cwd=tmp_path, env=env)
    assert batch.returncode == 1
    assert "Traceback" not in batch.stderr
    assert "stopped" in batch.stderr
    for text in (gen.stdout, gen.stderr, batch.stdout, batch.stderr):
        assert secret not in text
    for path in (tmp_path / "out").rglob("*"):  # the gallery's chunks included
        if path.is_file():
            assert secret not in path.read_text(errors="replace")


def test_rerun_resumes_without_new_requests(tmp_path: pathlib.Path, server: str) -> None:
    write(tmp_path / "p.txt", "".join(f"resume prompt {i}\n" for i in range(6)))
    args = ("--base-url", server, "--api-key", KEY, "batch", "p.txt", "-o", "out", "--yes")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    after_first = generate_requests(server)
    assert after_first == 6
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert generate_requests(server) == after_first
    assert "6 of 6 jobs already done" in second.stderr
    assert "6 from an earlier run" in second.stderr


def store_counts(path: pathlib.Path) -> dict[str, int]:
    """Jobs by state in the SQLite journal at ``path``, read-only (a run may be writing)."""
    import sqlite3

    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT state, count(*) FROM nanobanana_jobs GROUP BY state")
        return {state: int(count) for state, count in rows}
    except sqlite3.OperationalError:  # the run has not created its table yet
        return {}
    finally:
        conn.close()


def wait_for_done(path: pathlib.Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Wait until ``count`` jobs of the SQLite journal at ``path`` are done."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the command ended before it could be interrupted"
        if store_counts(path).get("done", 0) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never had {count} done jobs")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_a_rerun_resumes(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import Emulator, Faults, serve

    jobs = 20
    write(tmp_path / "p.txt", "".join(f"interrupted prompt {i}\n" for i in range(jobs)))
    emulator = Emulator(faults=Faults(latency=0.3), seed=2)
    with serve(emulator, "127.0.0.1", 0) as running:
        base = str(running.base_url)
        args = ["--base-url", base, "--api-key", KEY, "batch", "p.txt", "-o", "out", "--yes"]
        args += ["-c", "2"]
        proc = subprocess.Popen(
            command(*args),
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        journal = tmp_path / "out" / "journal.db"
        wait_for_done(journal, 4, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert "Interrupted" in err
        # Ctrl-C stopped taking jobs and let the two in flight finish, downloads included.
        rows = stored_rows(tmp_path / "out")
        done = [r for r in rows if r["state"] == "done"]
        assert 4 <= len(done) < jobs
        assert {r["state"] for r in rows} <= {"done", "skipped"}
        assert all(len(r["files"]) == 1 for r in done)
        assert generate_requests(base) == len(done) == running.emulator.stats.generations
        gallery = (tmp_path / "out" / "index.html").read_text()
        assert gallery.count('class="card"') == len(rows)

        before = generate_requests(base)
        rerun = run_cli(*args, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        # Only the jobs the journal did not record are sent again.
        assert generate_requests(base) - before == jobs - len(done)
        assert {r["state"] for r in stored_rows(tmp_path / "out")} == {"done"}
        assert len(list((tmp_path / "out").glob("*.png"))) == jobs


@pytest.mark.slow
def test_emulator_command_serves_until_ctrl_c(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen(
        command("emulator", "--port", "0", "--credits", "4", "--latency", "0.01"),
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), base
        env = cli_env(NANOBANANA_BASE_URL=base, NANOBANANA_API_KEY="any-key")
        ok = run_cli("generate", "a fox", "-n", "2", cwd=tmp_path, env=env)
        assert ok.returncode == 0, ok.stderr
        assert len(ok.stdout.split()) == 2
        broke = run_cli("generate", "a fox", cwd=tmp_path, env=env)
        assert_clean_error(broke, 1, "insufficient credits")
        assert generate_requests(base) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_emulator_command_takes_faults_by_name(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("uvicorn")
    unknown = run_cli("emulator", "--port", "0", "--fault", "nope=0.1", cwd=tmp_path)
    assert_clean_error(unknown, 2, "unknown fault 'nope'", "truncated_success", "gzip")
    too_much = run_cli(
        "emulator", "--port", "0", "--fail-rate", "0.6", "--fault", "cut_success=0.6",
        cwd=tmp_path,
    )  # fmt: skip
    assert_clean_error(too_much, 2, "outcome rates")
    proc = subprocess.Popen(
        command("emulator", "--port", "0", "--fault", "gzip=1", "--fault", "odd_unicode=1"),
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), base
        denied = httpx.post(f"{base}/v1/images/generate", json={"prompt": "x"})
        assert denied.headers["content-encoding"] == "gzip"
        assert denied.json()["message"].startswith("invalid API key ")
        assert stats(base)["faults"]["odd_unicode_message"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
