"""The batch and worker options: one typed keyword set (``BatchKWs``, ``WorkerKWs``) for the
four entry points, checked by type checkers and at run time."""

from __future__ import annotations

import inspect
import typing

import attrs
import pytest

from nanobanana_async import AsyncNanoBanana
from nanobanana_async.batch import BatchKWs, BatchOptions, WorkerKWs
from nanobanana_async.emulator import Emulator

pytestmark = pytest.mark.anyio

KEY = "nb-options-0123456789abcdef"


def test_the_keyword_sets_are_the_options_of_a_batch_and_of_a_worker() -> None:
    fields = {field.name for field in attrs.fields(BatchOptions)}
    assert set(BatchKWs.__annotations__) == fields - {"follow", "poll_interval"}
    # A worker's store is its first argument, and a worker has no input order.
    assert set(WorkerKWs.__annotations__) == fields - {"journal", "ordered"}
    assert not BatchKWs.__required_keys__
    assert not WorkerKWs.__required_keys__


@pytest.mark.parametrize(
    ("method", "misspelled", "hint"),
    [
        ("batch", "max_credit", "max_credits"),
        ("run_batch", "concurency", "concurrency"),
        ("worker", "ordered", None),
        ("run_worker", "poll_intervals", "poll_interval"),
    ],
)
async def test_a_keyword_the_call_does_not_take_is_refused_naming_the_closest(
    method: str, misspelled: str, hint: str | None
) -> None:
    async with AsyncNanoBanana(KEY, transport=Emulator().transport()) as client:
        first = ["a fox"] if "batch" in method else "sqlite:///unused.db"

        async def call() -> None:
            result = getattr(client, method)(first, **{misspelled: 1})
            if inspect.isawaitable(result):  # run_batch, run_worker
                await result

        with pytest.raises(TypeError) as info:
            await call()
    message = str(info.value)
    assert message.startswith(f"{method}() got an unexpected keyword argument {misspelled!r}")
    assert (f"did you mean {hint!r}" in message) if hint else ("did you mean" not in message)


async def test_every_entry_point_takes_its_options(tmp_path: typing.Any) -> None:
    emulator = Emulator(keys={KEY: 100})
    async with AsyncNanoBanana(KEY, transport=emulator.transport()) as client:
        report = await client.run_batch(["a", "b", "c"], concurrency=2, max_credits=4)
        assert (report.succeeded, report.skipped) == (2, 1)
        store = f"sqlite:///{tmp_path / 'jobs.db'}"
        worker = await client.run_worker(store, concurrency=2, poll_interval=0.5)
        assert worker.results == ()


def never_called(client: AsyncNanoBanana) -> None:
    # Type checkers see each option's type: mypy (strict, warn_unused_ignores) fails this file
    # if any of these is not an error.
    client.batch([], concurrency="8")  # type: ignore[arg-type]
    client.batch([], follow=True)  # type: ignore[call-arg]
    client.worker("sqlite:///x.db", ordered=True)  # type: ignore[call-arg]
    client.worker("sqlite:///x.db", poll_interval="1")  # type: ignore[arg-type]
