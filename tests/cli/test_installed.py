"""The package as PyPI would carry it, and the command line's edges through its console script
(issue 20, items 7, 8, 9 and 13).

The wheel and the sdist are built from this tree; the wheel is installed in fresh venvs (one
with the ``cli`` extra's rich, one without), and ``nanobanana`` runs from empty temporary
directories: no checkout, no network (``tests/support/installed.py``).
"""

from __future__ import annotations

import email.parser
import json
import pathlib
import re
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator

import pytest

from tests.support.installed import ROOT, Dist, Installed, build_dist, install

REPOSITORY = "https://github.com/nanobanana-async/nanobanana-async"
EXTRA_MISSING = "pip install 'nanobanana-async[cli]'"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    return build_dist(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def with_cli(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return install(tmp_path_factory.mktemp("venv") / "cli", dist.wheel)


@pytest.fixture(scope="module")
def without_rich(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return install(tmp_path_factory.mktemp("venv") / "bare", dist.wheel, hide=["rich"])


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# -- 13. the package ---------------------------------------------------------------------------


def test_the_wheel_and_the_sdist_carry_the_license_and_the_metadata(dist: Dist) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = wheel.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        assert wheel.read(f"{info}/licenses/LICENSE").decode() == license_text
        assert "nanobanana_async/cli/demo_prompts.txt" in names
        assert "nanobanana_async/py.typed" in names
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    with tarfile.open(dist.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        member = sdist.extractfile(f"{top}/LICENSE")
        assert member is not None
        assert member.read().decode() == license_text

    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Documentation", "Repository", "Issues"}
    assert all(url.startswith(REPOSITORY) for url in urls.values()), urls
    classifiers = metadata.get_all("Classifier") or []
    for expected in (
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Programming Language :: Python :: 3.11",
        "Framework :: AsyncIO",
        "Framework :: Trio",
        "Typing :: Typed",
    ):
        assert expected in classifiers
    assert {"async", "httpx", "image generation"} <= set(metadata["Keywords"].split(","))
    # The long description is the README: what PyPI shows.
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert 'pip install "nanobanana-async[cli]"' in description
    links = re.findall(r"\]\(([^)\s]+)\)", description)
    assert links
    assert [link for link in links if not link.startswith("https://")] == []


def test_the_demo_runs_without_a_checkout(with_cli: Installed, tmp_path: pathlib.Path) -> None:
    proc = with_cli.run("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "nanobanana-demo"
    images = sorted(out.glob("*.png"))
    prompts = [
        line
        for line in (out / "prompts.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(prompts) == 36
    assert len(images) == 36
    assert all(image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    page = (out / "index.html").read_text()
    assert page.count('class="card"') == 36
    assert "nanobanana-demo/index.html" in proc.stderr
    # The wheel's copy ran, not this tree's.
    where = subprocess.run(
        [str(with_cli.python), "-c", "import nanobanana_async; print(nanobanana_async.__file__)"],
        cwd=tmp_path,
        env=with_cli.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert pathlib.Path(where.strip()).is_relative_to(with_cli.root)
    # Run again: it resumes from its journal, and sends nothing.
    again = with_cli.run("demo", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "36 of 36 jobs already done" in again.stderr


def test_the_packaged_prompts_are_the_examples(dist: Dist) -> None:
    def prompts(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    with zipfile.ZipFile(dist.wheel) as wheel:
        packaged = wheel.read("nanobanana_async/cli/demo_prompts.txt").decode()
    assert prompts(packaged) == prompts((ROOT / "examples" / "prompts.txt").read_text())


# -- 7. help and usage errors without rich -----------------------------------------------------


def test_help_and_usage_errors_work_without_rich(
    without_rich: Installed, tmp_path: pathlib.Path
) -> None:
    absent = subprocess.run(
        [str(without_rich.python), "-c", "import rich"],
        env=without_rich.env(),
        capture_output=True,
        check=False,
    )
    assert absent.returncode != 0  # the extra really is missing

    helped = without_rich.run("--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for command in ("generate", "batch", "demo", "estimate", "models", "jobs", "emulator"):
        assert command in helped.stdout
    assert without_rich.run("batch", "--help", cwd=tmp_path).returncode == 0
    version = without_rich.run("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith("nanobanana ")

    unknown = without_rich.run("paint", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "invalid choice: 'paint'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = without_rich.run("batch", cwd=tmp_path)
    assert missing.returncode == 2
    assert "the following arguments are required: FILE" in missing.stderr


@pytest.mark.parametrize(
    "args",
    [("models",), ("demo",), ("generate", "a fox", "--emulator"), ("estimate", "-")],
    ids=lambda a: a[0],
)
def test_a_command_that_draws_says_which_extra_to_install(
    without_rich: Installed, tmp_path: pathlib.Path, args: tuple[str, ...]
) -> None:
    proc = without_rich.run(*args, cwd=tmp_path)
    assert_one_line_error(proc, 2, f"nanobanana {args[0]} ", "rich", EXTRA_MISSING)
    assert list(tmp_path.iterdir()) == []  # refused before doing anything


# -- 8. reading commands refuse a store that does not exist ------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("export", "-o", "out.jsonl"),
        ("retry", "--failed"),
        ("download", "-o", "images"),
    ],
    ids=lambda a: a[0],
)
def test_reading_commands_refuse_a_store_that_does_not_exist(
    with_cli: Installed, tmp_path: pathlib.Path, args: tuple[str, ...]
) -> None:
    proc = with_cli.run("jobs", *args, "--store", "sqlite:///typo.db", cwd=tmp_path)
    assert_one_line_error(proc, 2, "--store sqlite:///typo.db: no job store at typo.db")
    assert list(tmp_path.iterdir()) == []  # neither the database nor any output was created


def test_a_store_that_exists_is_read(with_cli: Installed, tmp_path: pathlib.Path) -> None:
    (tmp_path / "jobs.txt").write_text("a fox\nan owl\n")
    added = with_cli.run("jobs", "add", "jobs.txt", "--store", "sqlite:///jobs.db", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    status = with_cli.run("jobs", "status", "--json", "--store", "sqlite:///jobs.db", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["pending"] == 2


# -- 9. generate reports what came back ---------------------------------------------------------


@pytest.fixture
def partial_emulator(with_cli: Installed, tmp_path: pathlib.Path) -> Iterator[str]:
    """``nanobanana emulator`` answering every request with fewer images than asked."""
    proc = subprocess.Popen(
        [str(with_cli.script), "emulator", "--port", "0", "--fault", "partial=1"],
        cwd=tmp_path,
        env=with_cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_generate_reports_the_images_that_came_back(
    with_cli: Installed, tmp_path: pathlib.Path, partial_emulator: str
) -> None:
    common = ("--base-url", partial_emulator, "--api-key", "sk-any", "-n", "2")
    shown = with_cli.run("generate", "a fox", *common, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.split()) == 1  # one URL on stdout
    assert "1 image (partial: 2 asked)" in shown.stderr
    assert "2 credits" in shown.stderr
    assert "2 images" not in shown.stderr
    assert "4 credits" not in shown.stderr

    as_json = with_cli.run("generate", "a fox", *common, "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["num"] == 2
    assert record["images"] == 1
    assert record["partial"] is True
    assert record["credits"] == 2
    assert len(record["urls"]) == 1
