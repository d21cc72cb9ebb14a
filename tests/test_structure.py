"""Structured concurrency, checked in the source: every task of the SDK belongs to a task group
that an ``async with`` owns. No finaliser stops work (``__del__``, ``weakref.finalize``), no
task is started outside a group (a system task, a bare ``create_task``/``ensure_future``).

Read from the syntax tree, so neither a comment nor a docstring that names them counts."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nanobanana_async"

FORBIDDEN_CALLS = {"create_task", "ensure_future", "spawn_system_task", "finalize"}


def offences(path: pathlib.Path, base: pathlib.Path = ROOT) -> list[str]:
    found = []
    tree = ast.parse(path.read_text("utf-8"), str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(base).as_posix()}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "__del__":
            found.append(f"{where} defines __del__")
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else None
            if isinstance(function, ast.Name):
                name = function.id
            if name in FORBIDDEN_CALLS:
                found.append(f"{where} calls {name}()")
    return found


def test_no_task_outlives_the_block_that_owns_it() -> None:
    found = [o for path in sorted(PACKAGE.rglob("*.py")) for o in offences(path)]
    assert found == []


def test_the_check_sees_each_kind_of_offence(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio, weakref, trio\n"
        "class Run:\n"
        "    def __del__(self):\n"
        "        pass\n"
        "asyncio.get_running_loop().create_task(work())\n"
        "asyncio.ensure_future(work())\n"
        "trio.lowlevel.spawn_system_task(work)\n"
        "weakref.finalize(object(), print)\n"
        "# create_task( in a comment is not a call\n"
    )
    found = offences(sample, tmp_path)
    assert [o.split(" ", 1)[1] for o in found] == [
        "defines __del__",
        "calls create_task()",
        "calls ensure_future()",
        "calls spawn_system_task()",
        "calls finalize()",
    ]
