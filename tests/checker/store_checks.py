"""The money invariants of the store checker (:mod:`tests.checker.stores`), judged by the
emulator's ledger against what the actors reported and what the store (and its spool) holds.

After every round, for each actor of the round:

- it was charged no more than its ``max_credits``, nor than its client's limits' budget;
- it reported each job at most once; a batch that nothing stopped reported each of its jobs
  exactly once;
- each job it was charged for is in its report (``run.report``: results read, and those a
  stop or a cancellation kept from the consumer), charged at least what the report says it
  spent and at most that plus what it says may have been spent; a job it reported that was
  not charged says it spent nothing. A process killed with SIGKILL reports nothing: each job
  it was charged for was charged at most one attempt (one per allowed attempt with
  ``retry_ambiguous``);
- nothing but SDK errors escaped (an SDK error only when the store was made to fail); a
  process ended as its stop says (0, 143 after SIGTERM, killed), without a traceback;
- the key is in no report, output or log line.

And for the schedule so far:

- no job was charged by two runs: once a job may have been charged, no later run sends it
  again (only ``jobs retry --ambiguous`` would, and the checker never asks);
- every credit charged for a job is in the store (done credits, may-have-been-spent,
  the reservation of a row being sent) or in the spool, job by job;
- the key is in no row and no spool line.

At the end (the spool put back, a last run on a healthy store): every job is in a final
state; the spool is empty and what it held is in the store; the store's totals (spent plus
may-have-been-spent) are not below the ledger, and a done job's credits are not above what it
was charged; no two done jobs share a file.
"""

from __future__ import annotations

import json
import pathlib
import signal
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana_async import DEFAULT_PRICING, Job
from nanobanana_async.batch.journal import _torn_id, content_id
from nanobanana_async.batch.stores import FINAL_STATES, StoreStatus

from .store_schedule import Actor

if TYPE_CHECKING:
    from .stores import StoreChecker

__all__ = ["Outcome", "Snapshot", "check_final", "check_round", "snapshot"]


@attrs.define
class Outcome:
    """What one actor did and said."""

    round: int
    number: int
    actor: Actor
    key: str
    results: list[dict[str, Any]] | None = None  # its report's results (result_entry)
    reported: list[int] = attrs.Factory(list)  # indices, in the order the consumer read them
    raised: str | None = None  # an SDK error it ended with
    escaped: str | None = None  # anything else: a bug
    stopped: bool = False  # its stop happened
    killed: bool = False
    early: bool = False  # signalled before its first request (the CLI may not handle it yet)
    # A worker process whose report says no signal stopped it: it ended by itself (a store
    # that was down, say) before the checker's SIGTERM came, which met the interpreter's exit.
    ended_alone: bool = False
    exit: int | None = None
    output: str = ""


@attrs.frozen
class Snapshot:
    """The ledger, the store and the spool at a quiet moment (no request in flight)."""

    charged: Counter[str]  # prompt -> credits charged, every run
    by_key: dict[str, Counter[str]]  # API key -> prompt -> credits
    rows: dict[str, dict[str, Any]]  # prompt -> its row (a JSONL journal: its last line)
    covered: Counter[str]  # prompt -> credits the store and the spool account for
    spool: list[dict[str, Any]]
    status: StoreStatus | None
    text: str  # every row's and spool line's text, for the key

    @property
    def ledger(self) -> int:
        return sum(self.charged.values())


async def snapshot(checker: StoreChecker) -> Snapshot:
    jobs = {job.prompt: job for job in checker.schedule.jobs}
    charged: Counter[str] = Counter()
    by_key: dict[str, Counter[str]] = defaultdict(Counter)
    for api_key, prompt, credits in checker.emulator.charges:
        if prompt in jobs:
            charged[prompt] += credits
            by_key[api_key][prompt] += credits
    covered: Counter[str] = Counter()
    spool: list[dict[str, Any]] = []
    lines: list[str] = []
    for path in sorted((checker.workdir / "spool").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            lines.append(line)
            if line.strip():
                spool.append(json.loads(line))
    if checker.jsonl:
        rows, text = _journal(checker, jobs, covered, [e["line"] for e in spool])
        return Snapshot(charged, dict(by_key), rows, covered, spool, None, text + "".join(lines))
    store = checker.store()
    rows = {row["prompt"]: row async for row in store.rows()}
    status = await store.status()
    for prompt, row in rows.items():
        held = row["reserved"] if row["state"] in ("sending", "ambiguous") else 0
        covered[prompt] += row["credits"] + row["uncertain"] + held
    for entry in spool:
        params = entry["params"]
        spent = int(params.get("credits", 0)) + int(params.get("uncertain", 0))
        covered[entry["job"]["prompt"]] += spent
    text = "\n".join(f"{r['error']} {r['reason']}" for r in rows.values()) + "\n".join(lines)
    return Snapshot(charged, dict(by_key), rows, covered, spool, status, text)


def _journal(
    checker: StoreChecker, jobs: dict[str, Job], covered: Counter[str], spooled: list[Any]
) -> tuple[dict[str, dict[str, Any]], str]:
    """A JSONL journal's rows: each job's last line (a torn line: ambiguous; lines in its
    spool after those of the file), and what its lines say it spent or may have spent."""
    path = checker.url
    ids = {job.id or content_id(job): prompt for prompt, job in jobs.items()}
    rows: dict[str, dict[str, Any]] = {}
    try:
        data = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        data = b""
    entries: list[Any] = []
    for line in data.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            # A torn line naming its job: ambiguous (it may have been charged, and a rerun
            # skips it), unless a whole line of the job says more.
            prompt = ids.get(_torn_id(line) or "")
            if prompt is not None:
                rows.setdefault(prompt, {"state": "ambiguous"})
                covered[prompt] = max(covered[prompt], DEFAULT_PRICING.credits(jobs[prompt]))
    for entry in entries + spooled:
        prompt = ids.get(entry.get("id"))
        if prompt is None:
            continue
        spent = int(entry.get("credits") or 0) + int(entry.get("credits_may_have_been_spent") or 0)
        covered[prompt] = max(covered[prompt], spent)
        rows[prompt] = {**entry, "state": entry.get("status")}
    return rows, data.decode(errors="replace")


def _allowed(actor: Actor, cost: int) -> int:
    return cost * (1 + actor.max_retries if actor.retry_ambiguous else 1)


def _check_actor(checker: StoreChecker, outcome: Outcome, snap: Snapshot) -> list[str]:
    failures: list[str] = []
    actor, n = outcome.actor, outcome.number

    def fail(message: str) -> None:
        failures.append(f"actor {n} ({actor.kind}, round {outcome.round}): {message}")

    jobs = {job.prompt: job for job in checker.schedule.jobs}
    paid = snap.by_key.get(outcome.key, Counter())
    total = sum(paid.values())
    for cap in (actor.max_credits, actor.client_max_credits):
        if cap is not None and total > cap:
            fail(f"charged {total} for a cap of {cap}")
    if outcome.escaped is not None:
        fail(f"escaped: {outcome.escaped}")
    if checker.key in outcome.output or checker.key in (outcome.raised or ""):
        fail("the key is in its output")
    if "Traceback" in outcome.output:
        fail(f"a traceback: {outcome.output[-3000:]}")
    if actor.kind in ("process", "cli"):
        expected = {0, 143} if actor.kind == "process" else {0, 1, 3, 143}
        if outcome.killed:
            expected.add(-signal.SIGKILL)
        if (outcome.early and actor.kind == "cli") or outcome.ended_alone:
            expected.add(-signal.SIGTERM)
        if outcome.exit not in expected:
            fail(f"exit status {outcome.exit}: {outcome.output[-2000:]}")
    if outcome.raised is not None and not _store_failed(checker, outcome):
        fail(f"raised {outcome.raised} with a healthy store")
    entries = outcome.results
    if entries is None:
        if not outcome.killed and actor.kind != "cli":
            fail("no report")
        for prompt, credits in paid.items():
            if credits > _allowed(actor, DEFAULT_PRICING.credits(jobs[prompt])):
                fail(f"{prompt!r} charged {credits} without a report")
        return failures
    reported = Counter(outcome.reported)
    if any(count > 1 for count in reported.values()):
        fail(f"reported twice: {sorted(i for i, c in reported.items() if c > 1)}")
    counts = Counter(e["prompt"] for e in entries)
    if any(count > 1 for count in counts.values()):
        fail(f"in its report twice: {sorted(p for p, c in counts.items() if c > 1)}")
    if (
        actor.kind == "batch"
        and actor.stop in ("none", "break")
        and outcome.raised is None
        and (actor.stop == "none" or len(outcome.reported) < actor.after)
        and sorted(reported) != list(range(len(actor.jobs)))
    ):
        fail(f"reported {sorted(reported)} of {len(actor.jobs)} jobs")
    by_prompt = {e["prompt"]: e for e in entries}
    for prompt in set(paid) | set(by_prompt):
        entry = by_prompt.get(prompt)
        credits = paid.get(prompt, 0)
        if entry is None:
            fail(f"{prompt!r} charged {credits}, not in its report")
            continue
        low, high = entry["credits"], entry["credits"] + entry["maybe"]
        if not low <= credits <= high:
            fail(
                f"{prompt!r} ({entry['status']}, resumed={entry['resumed']}) charged {credits}, "
                f"its report says {low} spent and {entry['maybe']} maybe"
            )
        if checker.key in entry["text"]:
            fail(f"the key is in the result of {prompt!r}")
    return failures


def _store_failed(checker: StoreChecker, outcome: Outcome) -> bool:
    """Whether the store was made to fail under this actor (an SDK error is then allowed)."""
    s = checker.schedule
    if outcome.round > len(s.rounds):
        return False  # the last run has a healthy store
    events = s.rounds[outcome.round - 1].events
    return bool(events) or (outcome.actor.store_faults and bool(s.error_rate or s.slow_rate))


def check_round(checker: StoreChecker, snap: Snapshot, round_number: int) -> list[str]:
    failures: list[str] = []
    for outcome in checker.outcomes:
        if outcome.round == round_number:
            failures += _check_actor(checker, outcome, snap)
    # No job paid by two runs.
    payers: dict[str, list[int]] = defaultdict(list)
    for outcome in checker.outcomes:
        for prompt, credits in snap.by_key.get(outcome.key, Counter()).items():
            if credits:
                payers[prompt].append(outcome.number)
    for prompt, numbers in payers.items():
        if len(numbers) > 1 and prompt not in checker.paid_twice:
            checker.paid_twice.add(prompt)
            failures.append(f"{prompt!r} charged by actors {numbers}")
    # Every credit charged is in the store or the spool.
    for prompt, credits in snap.charged.items():
        if credits > snap.covered[prompt]:
            row = snap.rows.get(prompt)
            failures.append(
                f"after round {round_number}: {prompt!r} charged {credits}, the store and "
                f"spool account for {snap.covered[prompt]} (row: {_short(row)})"
            )
    if checker.key in snap.text:
        failures.append(f"after round {round_number}: the key is in the store or the spool")
    checker.spooled += [e for e in snap.spool if e not in checker.spooled]
    return failures


def check_final(checker: StoreChecker, snap: Snapshot) -> list[str]:
    failures = check_round(checker, snap, len(checker.schedule.rounds) + 1)
    for job in checker.schedule.jobs:
        row = snap.rows.get(job.prompt)
        # A JSONL job's "generated" line is a generation kept: a rerun resumes it.
        final = FINAL_STATES if not checker.jsonl else (*_JOURNALED, "generated")
        if row is None or row["state"] not in final:
            failures.append(f"at the end {job.prompt!r} is {_short(row)}")
    if snap.spool or (snap.status is not None and snap.status.spooled):
        failures.append(f"the spool still holds {len(snap.spool)} entries")
    if snap.status is None:
        return failures
    for entry in checker.spooled:
        row = snap.rows.get(entry["job"]["prompt"])
        if entry["op"] == "done" and (row is None or row["state"] != "done"):
            failures.append(f"a spooled result is not in the store: {entry}, row {_short(row)}")
    covered = snap.status.credits_spent + snap.status.credits_may_have_been_spent
    if covered < snap.ledger:
        failures.append(f"the store accounts for {covered} of the {snap.ledger} charged")
    files: Counter[str] = Counter()
    for prompt, row in snap.rows.items():
        if row["state"] == "done" and row["credits"] > snap.charged[prompt]:
            failures.append(
                f"{prompt!r} is done with {row['credits']} credits, charged {snap.charged[prompt]}"
            )
        files.update(row["files"])
    if any(count > 1 for count in files.values()):
        failures.append(f"files shared by jobs: {[f for f, c in files.items() if c > 1]}")
    return failures


_JOURNALED = ("succeeded", "failed", "skipped", "ambiguous")


def _short(row: dict[str, Any] | None) -> str:
    if row is None:
        return "absent"
    keys = ("state", "credits", "uncertain", "reserved", "lease_owner", "attempts", "error")
    return str({k: row.get(k) for k in keys if k in row})
