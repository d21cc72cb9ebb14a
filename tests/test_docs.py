"""The documentation runs: every ```python block of README.md and docs/*.md is a test.

Each block is self-contained (it builds its own emulator and client), so each one runs alone in
a fresh namespace, from an empty temporary working directory that must stay empty. A block
fenced as ```python notest is shown but not run (the pytest-markdown-docs convention); the
blocks also pass under ``pytest --markdown-docs README.md docs/``. A block fenced as
```python redis uses a Redis: it reads ``REDIS_URL``, which the test points at the real
redis-server the limits tests start (skipped, saying so, where none is installed). A block
fenced as ```python ray runs on the local Ray the Ray tests start (once per test session).

The README's first code block is the project's contract (the offline main job, then the test
command), so its two lines are pinned here, and every ``nanobanana`` command shown in a shell
block must parse with the real command line.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import shlex

import attrs
import pytest
from markdown_it import MarkdownIt

import nanobanana_async
from nanobanana_async.cli import build_parser
from tests.support.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOC_PAGES = (
    "index",
    "quickstart",
    "batching",
    "errors",
    "pricing",
    "cli",
    "testing",
    "fastapi",
    "observability",
    "reliability",
    "benchmarks",
    "architecture",
    "scaling",
    "operations",
    "ray",
)
MAIN_JOB = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[cli]" && '
    ".venv/bin/nanobanana batch examples/prompts.txt --emulator -o out --yes   "
    "# then open out/index.html"
)
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/pytest'
PYTHON = frozenset({"python", "py", "python3"})
SHELL = frozenset({"bash", "sh", "console", "shell"})


@attrs.frozen
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the first line of code
    lang: str
    options: frozenset[str]
    source: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def markdown_files() -> list[pathlib.Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: pathlib.Path) -> list[Block]:
    found = []
    for token in MarkdownIt("commonmark").parse(path.read_text("utf-8")):
        if token.type != "fence" or token.map is None:
            continue
        lang, *options = token.info.split() or [""]
        found.append(Block(path, token.map[0] + 2, lang, frozenset(options), token.content))
    return found


def python_blocks() -> list[Block]:
    return [
        b
        for path in markdown_files()
        for b in blocks(path)
        if b.lang in PYTHON and "notest" not in b.options
    ]


# A block that reads this variable gets the URL of a fresh database on the real Postgres server
# the tests start (tests/conftest.py): the docs' shared job store examples run against it.
STORE_VARIABLE = "NANOBANANA_STORE"


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.name)
def test_python_block_runs(
    block: Block,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # No ambient key or URL: a block must say everything it needs (and may set these itself;
    # monkeypatch puts them back afterwards).
    monkeypatch.delenv("NANOBANANA_API_KEY", raising=False)
    monkeypatch.delenv("NANOBANANA_BASE_URL", raising=False)
    monkeypatch.delenv(STORE_VARIABLE, raising=False)
    if STORE_VARIABLE in block.source:
        monkeypatch.setenv(STORE_VARIABLE, str(request.getfixturevalue("pg_url")))
    monkeypatch.delenv("NANOBANANA_LIMITS", raising=False)
    if "redis" in block.options:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))
    if "ray" in block.options:
        request.getfixturevalue("ray_session")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    # Padding keeps tracebacks on the block's real line numbers in the Markdown file.
    code = compile("\n" * (block.line - 1) + block.source, str(block.path), "exec")
    exec(code, {"__name__": "__main__"})
    assert sorted(p.name for p in workdir.iterdir()) == [], "the block left files behind"


def test_every_page_has_running_examples() -> None:
    paths = {b.path for b in python_blocks()}
    for page in DOC_PAGES:
        path = ROOT / "docs" / f"{page}.md"
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"
        if page not in ("index", "cli", "reliability", "benchmarks", "architecture"):
            assert path in paths, f"{path.relative_to(ROOT)} has no runnable python block"
    assert README in paths


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text("utf-8")
    lines = text.splitlines()
    assert lines[0] == "# nanobanana-async"
    first = blocks(README)[0]
    # Title, at most one sentence, then the block: nothing else in between.
    between = [line for line in lines[1 : first.line - 2] if line.strip()]
    assert len(between) <= 1, between
    assert first.lang == "bash"
    assert first.source.splitlines()[:2] == [MAIN_JOB, TEST_COMMAND]


def _logical_lines(source: str) -> list[tuple[int, str]]:
    """Lines of a shell block with backslash continuations joined, each with its first line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(source.splitlines()):
        if pending is not None:
            offset, raw = pending[0], pending[1] + " " + raw.strip()
        if raw.endswith("\\"):
            pending = (offset, raw[:-1].rstrip())
            continue
        pending = None
        out.append((offset, raw))
    if pending is not None:
        out.append(pending)
    return out


def shell_commands() -> list[tuple[str, str]]:
    commands = []
    for path in markdown_files():
        for block in blocks(path):
            if block.lang not in SHELL:
                continue
            for offset, raw in _logical_lines(block.source):
                line = raw.removeprefix("$ ").split("#", 1)[0].strip()
                for part in re.split(r"&&|\|\|?|;|>", line):
                    words = shlex.split(part.strip())
                    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                        words = words[1:]  # VAR=value before the command
                    if words and words[0].endswith("nanobanana"):
                        where = f"{block.path.relative_to(ROOT).as_posix()}:{block.line + offset}"
                        commands.append((where, shlex.join(words[1:])))
    return commands


@pytest.mark.parametrize(("where", "args"), shell_commands(), ids=lambda v: str(v))
def test_shell_examples_parse(where: str, args: str) -> None:
    code: object = 0
    try:
        build_parser().parse_args(shlex.split(args))
    except SystemExit as exc:  # argparse's way to refuse arguments (or to print --help)
        code = exc.code
    assert code == 0, f"{where}: nanobanana {args} is refused by the CLI"


def test_relative_links_resolve() -> None:
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for path in markdown_files():
        for target in link.findall(path.read_text("utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # an absolute URL
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_public_names_have_docstrings() -> None:
    missing = []
    for name in nanobanana_async.__all__:
        obj = getattr(nanobanana_async, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants and instances (DEFAULT_PRICING, MODELS, __version__)
        if not obj.__doc__:
            missing.append(name)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                if (isinstance(value, property) or inspect.isfunction(value)) and not value.__doc__:
                    missing.append(f"{name}.{attr}")
    assert missing == []


def test_tests_named_in_the_docs_exist() -> None:
    # docs/reliability.md proves each promise by naming tests: a renamed or moved test must not
    # leave a promise pointing at nothing.
    reference = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")
    missing = []
    for path in markdown_files():
        for file, name in reference.findall(path.read_text("utf-8")):
            source = ROOT / file
            if not source.is_file():
                missing.append(f"{path.relative_to(ROOT)}: {file}")
            elif name and not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
                missing.append(f"{path.relative_to(ROOT)}: {file}::{name}")
    assert missing == []


REPOSITORY = "https://github.com/nanobanana-async/nanobanana-async"


def test_readme_links_work_on_pypi() -> None:
    # PyPI shows the README without the repository around it: every link is absolute, and
    # those into this repository (the one the package metadata names) point at files here.
    import tomllib

    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text("utf-8"))
    assert links
    assert [link for link in links if not link.startswith("https://")] == []
    missing = []
    for link in links:
        for prefix in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/"):
            if link.startswith(prefix):
                path = link.removeprefix(prefix).split("#", 1)[0]
                if not (ROOT / path).exists():
                    missing.append(link)
    assert missing == []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    urls = project["urls"]
    assert all(url.startswith(REPOSITORY) for url in urls.values()), urls
    for prefix in (f"{REPOSITORY}/tree/main/",):
        for url in urls.values():
            if url.startswith(prefix):
                assert (ROOT / url.removeprefix(prefix)).exists(), url


def test_the_repository_cites_no_document_outside_it() -> None:
    # The product brief the project started from is not part of the repository: what the code
    # relies on is written in docs/, and nothing here may send a reader to the brief.
    brief = "DESIGN" + ".md"
    citing = []
    for path in [ROOT / "pyproject.toml", *markdown_files()]:
        if brief in path.read_text("utf-8"):
            citing.append(path.relative_to(ROOT).as_posix())
    for folder in ("nanobanana_async", "benchmarks", "examples", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            readable = path.suffix in {".py", ".js", ".toml", ".md", ".txt"} and path.is_file()
            if readable and brief in path.read_text("utf-8", errors="replace"):
                citing.append(path.relative_to(ROOT).as_posix())
    assert citing == []
