"""The coalescer on its own (its ``send`` is a function the test holds): operations of
concurrent tasks share calls, settlements linger for the next admission, a caller that stops
waiting gets its reservation undone, and a close fails what is left."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from nanobanana_async import LimitsUnavailableError
from nanobanana_async.limits.redis.coalescing import Coalescer

pytestmark = pytest.mark.anyio


class Wire:
    """A ``send`` that records each call and answers when the test lets it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []  # the operations' names, per call
        self.gate = anyio.Event()
        self.gate.set()

    async def send(self, args: list[Any], count: int) -> list[Any]:
        names = args[::2]
        self.calls.append(names)
        await self.gate.wait()
        return [f"reply to {name}" for name in names]

    def hold(self) -> anyio.Event:
        """Hold the answers of calls from now on; set the event returned to let them go."""
        self.gate = anyio.Event()
        return self.gate


def failure(exc: BaseException, consequence: str) -> LimitsUnavailableError:
    return LimitsUnavailableError(f"{exc!r}; {consequence}")


async def test_operations_asked_meanwhile_share_the_next_call() -> None:
    wire, coalescer = Wire(), Coalescer()
    replies: list[Any] = []

    async def ask(name: str) -> None:
        replies.append(await coalescer.submit([name, 0], "nothing was sent"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.run, wire.send, failure)
        await wait_all_tasks_blocked()
        gate = wire.hold()
        tg.start_soon(ask, "first")  # sent at once, from its own task
        await wait_all_tasks_blocked()
        for name in ("second", "third"):
            tg.start_soon(ask, name)
        await wait_all_tasks_blocked()
        gate.set()
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert sorted(replies) == ["reply to first", "reply to second", "reply to third"]
    assert [sorted(names) for names in wire.calls] == [["first"], ["second", "third"]]


async def test_settlements_wait_for_the_next_admission() -> None:
    wire, coalescer = Wire(), Coalescer(linger=3600)
    posted: list[Any] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.run, wire.send, failure)
        await wait_all_tasks_blocked()
        coalescer.post(["s1", 0], "kept", posted.append, posted.append)
        coalescer.post(["s2", 0], "kept", posted.append, posted.append)
        await wait_all_tasks_blocked()
        assert wire.calls == []  # not alone
        await coalescer.submit(["a1", 0], "nothing was sent")
        assert wire.calls == [["s1", "s2", "a1"]]
        assert posted == ["reply to s1", "reply to s2"]
        coalescer.post(["s3", 0], "kept", posted.append, posted.append)
        await coalescer.drain()  # at once, however long the lingering
        assert wire.calls[-1] == ["s3"]
        assert posted[-1] == "reply to s3"
        tg.cancel_scope.cancel()


async def test_settlements_alone_go_after_lingering() -> None:
    wire, coalescer = Wire(), Coalescer(linger=0.001)
    posted: list[Any] = []
    answered = anyio.Event()

    def got(reply: Any) -> None:
        posted.append(reply)
        answered.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.run, wire.send, failure)
        await wait_all_tasks_blocked()
        coalescer.post(["s1", 0], "kept", got, got)
        with anyio.fail_after(10):
            await answered.wait()
        tg.cancel_scope.cancel()
    assert (wire.calls, posted) == ([["s1"]], ["reply to s1"])


async def test_a_caller_that_stops_waiting_gets_its_operation_undone_or_never_sent() -> None:
    wire, coalescer = Wire(), Coalescer()
    undone: list[Any] = []
    waiting = anyio.CancelScope()

    async def abandoned(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await coalescer.submit([name, 0], "x", undone.append)

    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.run, wire.send, failure)
        await wait_all_tasks_blocked()
        gate = wire.hold()
        tg.start_soon(coalescer.submit, ["holds the wire", 0], "x")
        await wait_all_tasks_blocked()
        # Queued behind it, then abandoned: never sent.
        never = anyio.CancelScope()
        tg.start_soon(abandoned, "never sent", never)
        await wait_all_tasks_blocked()
        never.cancel()
        await wait_all_tasks_blocked()
        # Queued, sent, then abandoned while its call is in flight: its reply is undone.
        tg.start_soon(abandoned, "sent", waiting)
        await wait_all_tasks_blocked()
        second = wire.hold()
        gate.set()  # the first call answers; the sender sends "sent" and waits
        await wait_all_tasks_blocked()
        assert wire.calls == [["holds the wire"], ["sent"]]
        waiting.cancel()
        await wait_all_tasks_blocked()
        second.set()
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert undone == ["reply to sent"]


async def test_what_is_left_when_the_sender_stops_fails_with_the_limits_error() -> None:
    wire, coalescer = Wire(), Coalescer()
    failed: list[LimitsUnavailableError] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.run, wire.send, failure)
        await wait_all_tasks_blocked()
        gate = wire.hold()
        tg.start_soon(coalescer.submit, ["holds the wire", 0], "x")
        await wait_all_tasks_blocked()
        coalescer.post(["s1", 0], "the settlement is kept", failed.append, failed.append)
        tg.cancel_scope.cancel()  # the sender stops; the call in flight ends (shielded)
        gate.set()
    assert len(failed) == 1
    assert "the limits were closed" in str(failed[0])
    assert "the settlement is kept" in str(failed[0])
