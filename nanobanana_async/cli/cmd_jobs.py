"""``nanobanana jobs add|status|export|retry|download|recover``: a job store, seen and managed.

The store is SQLite (``sqlite:///jobs.db``, one machine) or Postgres (``postgresql://...``,
workers on many machines); ``nanobanana worker`` runs its jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from ..errors import NanoBananaError
from .common import (
    EMULATOR_BASE_URL,
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    add_input,
    add_job_defaults,
    add_store,
    console,
    load_jobs,
    make_dir,
    open_sql_store,
    out,
    pricing_of,
)

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream
    from rich.table import Table

    from ..batch.stores import SqlStore, StoreStatus
    from ..client import AsyncNanoBanana

__all__ = ["add_parser"]

# asyncio, rich, the client and the job stores are imported by the commands that run, not when
# the parser is built (``nanobanana --help``).


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``jobs`` and its subcommands."""
    jobs = sub.add_parser(
        "jobs",
        parents=[common],
        help="add, inspect and manage the jobs of a store (for nanobanana worker)",
        description="A job store holds one row per job: pending, claimed, sending, done, "
        "failed, skipped or ambiguous (its answer was lost, or a worker stopped while sending "
        "it: it may have been charged). Workers (nanobanana worker) run its pending jobs.",
    )
    commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)

    add = commands.add_parser(
        "add",
        parents=[common],
        help="add the jobs of a file as pending (idempotent by job id)",
        description="Add every job of FILE to the store as pending. A job whose id is already "
        "in the store is left alone, so adding the same file twice adds nothing; jobs without "
        "an id are named by their fields and occurrence, as a batch names them.",
    )
    add_store(add)
    add_input(add)
    add_job_defaults(add, rows=True)
    add.set_defaults(run=cmd_add)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="jobs by state, credits spent, ambiguous jobs",
        description="Count the jobs by state, add up the credits spent and those that may "
        "have been spent (ambiguous jobs), and list the first ambiguous job ids.",
    )
    add_store(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=cmd_status)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="write every job and its result as JSON lines",
        description="Write one JSON line per job, in the order they were added: the journal's "
        "fields (id, status, prompt, model, image_size, num, urls, credits, attempts, error, "
        "paths) plus the store's state and Idempotency-Key.",
    )
    add_store(export)
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="- for stdout")
    export.set_defaults(run=cmd_export)

    retry = commands.add_parser(
        "retry",
        parents=[common],
        help="put ambiguous, failed or skipped jobs back to pending",
        description="Put jobs back to pending so workers run them again. Ambiguous jobs may "
        "have been charged already: sending them again may pay twice, so this asks first "
        "(each keeps its Idempotency-Key, which a server that honours it uses to answer "
        "without charging again).",
    )
    add_store(retry)
    retry.add_argument("--ambiguous", action="store_true", help="ambiguous jobs (may pay twice)")
    retry.add_argument("--failed", action="store_true", help="failed jobs")
    retry.add_argument("--skipped", action="store_true", help="skipped jobs")
    retry.add_argument("-y", "--yes", action="store_true", help="do not ask")
    retry.set_defaults(run=cmd_retry)

    recover = commands.add_parser(
        "recover",
        parents=[common],
        help="put the results this machine spooled back into the store",
        description="A worker or batch whose store stayed down keeps the results it could not "
        "write in a local spool ($XDG_STATE_HOME/nanobanana/spool, or the store's spool_dir). "
        "The next run or worker on this machine puts them back when it opens the store; this "
        "does it now. Results whose job another worker holds right now stay for later.",
    )
    add_store(recover)
    recover.add_argument(
        "--spool",
        metavar="FILE",
        help="a spool file to put back (say, copied from another machine)",
    )
    recover.set_defaults(run=cmd_recover)

    download = commands.add_parser(
        "download",
        parents=[common],
        help="download the images of done jobs that are not in DIR yet",
        description="Fetch the images of every done job into DIR (named from the job ids, as "
        "a batch names them), skipping files already there, and record the paths. Workers on "
        "other machines download to their own -o DIR; this fetches what they did not.",
    )
    add_store(download)
    download.add_argument("-o", "--output", metavar="DIR", required=True)
    download.add_argument("-c", "--concurrency", type=int, default=8, help="downloads at once")
    download.add_argument(
        "--emulator", action="store_true", help="images of the in-process emulator"
    )
    download.set_defaults(run=cmd_download)


def cmd_add(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    pricing = pricing_of(args)
    jobs = load_jobs(args, pricing)
    store = open_sql_store(args.store)  # created if missing: jobs are added to it
    added = asyncio.run(store.add((s.job for s in jobs), pricing=pricing))
    already = len(jobs) - added
    note = f" ({already} already in the store)" if already else ""
    console(stderr=True).print(Text(f"Added {added} job(s) to {store.url}{note}."))
    return EXIT_OK


def status_table(status: StoreStatus, url: str) -> Table:
    from rich.table import Table

    table = Table(title=f"Jobs in {url}", title_justify="left", show_header=False, box=None)
    table.min_width = 40
    table.add_column(style="bold")
    table.add_column(justify="right")
    for state, count in status.to_dict()["counts"].items():  # type: ignore[attr-defined]
        style = {"done": "green", "failed": "red", "ambiguous": "yellow"}.get(state, "")
        table.add_row(state, f"[{style}]{count}[/]" if style and count else str(count))
    table.add_row("total", str(status.total))
    table.add_row("credits spent", str(status.credits_spent))
    if status.credits_may_have_been_spent:
        table.add_row("may have been spent", str(status.credits_may_have_been_spent))
    return table


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    store = open_sql_store(args.store, existing=True)
    status = asyncio.run(store.status())
    if args.json:
        out(json.dumps(status.to_dict()))
        return EXIT_OK
    stdout = console(stderr=False)
    stdout.print(status_table(status, store.url))
    if status.spooled:
        stdout.print(
            Text(
                f"{status.spooled} result(s) in this machine's spool ({store.spool.path}) are "
                f"not in the store yet: nanobanana jobs recover --store {store.url}",
                style="yellow",
            )
        )
    if status.ambiguous:
        more = status.counts.get("ambiguous", 0) - len(status.ambiguous)
        listed = ", ".join(status.ambiguous) + (f" and {more} more" if more > 0 else "")
        stdout.print(
            Text(
                f"Ambiguous (an answer was lost or a worker stopped while sending; may have been "
                f"charged): {listed}. "
                "Not sent again unless: nanobanana jobs retry --ambiguous",
                style="yellow",
            )
        )
    return EXIT_OK


def _export_record(row: dict[str, Any]) -> dict[str, Any]:
    status = {"done": "failed" if row["error"] else "succeeded"}.get(row["state"], row["state"])
    return {
        "id": row["id"],
        "index": row["index"],
        "status": status,
        "state": row["state"],
        "prompt": row["prompt"],
        "model": row["model"],
        "image_size": row["image_size"],
        "num": row["num"],
        "urls": row["urls"],
        "credits": row["credits"],
        "credits_may_have_been_spent": row["uncertain"]
        + (row["reserved"] if row["state"] in ("sending", "ambiguous") else 0),
        "attempts": row["attempts"],
        "paths": row["files"],
        "error": row["error"],
        "reason": row["reason"],
        "idempotency_key": row["idempotency_key"],
    }


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = pathlib.Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as fh:
            yield fh
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    from ..batch.journal import journal_line

    store = open_sql_store(args.store, existing=True)

    async def export(fh: IO[bytes]) -> int:
        count = 0
        async for row in store.rows():
            fh.write(journal_line(_export_record(row)))
            count += 1
        return count

    try:
        with _output(args.output) as fh:
            count = asyncio.run(export(fh))
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    if args.output != "-":
        console(stderr=True).print(Text(f"Exported {count} job(s) to {args.output}."))
    return EXIT_OK


def _confirm_twice(count: int, credits: int) -> bool:
    if not sys.stdin.isatty():
        raise CLIError(
            f"refusing to send {count} ambiguous job(s) again without confirmation (standard "
            "input is not a terminal): they may have been charged already; pass --yes"
        )
    err = console(stderr=True)
    err.print(
        f"[bold]{count}[/] ambiguous job(s) may have been charged already (up to {credits} "
        "credits): sending them again may pay twice. Continue? \\[y/N] ",
        end="",
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_retry(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    states = [s for s in ("ambiguous", "failed", "skipped") if getattr(args, s)]
    if not states:
        raise CLIError("say which jobs to retry: --ambiguous, --failed and/or --skipped")
    store = open_sql_store(args.store, existing=True)
    if "ambiguous" in states and not args.yes:
        status = asyncio.run(store.status())
        count = status.counts.get("ambiguous", 0)
        if count and not _confirm_twice(count, status.credits_may_have_been_spent):
            console(stderr=True).print("Cancelled: nothing changed.")
            return EXIT_FAILED
    moved = asyncio.run(store.retry(*states))
    console(stderr=True).print(
        Text(f"{moved} job(s) back to pending ({', '.join(states)}): run nanobanana worker.")
    )
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    store = open_sql_store(args.store, existing=True)
    if args.spool is not None and not pathlib.Path(args.spool).is_file():
        raise CLIError(f"--spool {args.spool}: no such file")
    done = asyncio.run(store.recover(args.spool))
    err = console(stderr=True)
    if not done.total:
        err.print(Text(f"Nothing to recover: {done.path} holds no results for {store.url}."))
        return EXIT_OK
    message = f"Put {done.applied} spooled result(s) from {done.path} into {store.url}."
    if done.kept:
        message += f" {done.kept} stay for later: their job is held by a worker right now."
    if done.refused:
        message += f" {done.refused} were refused by the store (see the log) and stay."
    if done.foreign:
        message += f" {done.foreign} belong to another store or queue and stay."
    err.print(Text(message))
    return EXIT_FAILED if done.refused or done.foreign else EXIT_OK


async def _download(
    store: SqlStore, client: AsyncNanoBanana, directory: pathlib.Path, concurrency: int
) -> tuple[int, int, int]:
    import anyio

    from ..batch.files import file_stem, image_filename

    fetched = present = failed = 0

    async def one(row: dict[str, Any]) -> None:
        nonlocal fetched, present, failed
        stem = file_stem(row["id"])
        paths: list[str] = []
        error = None
        for position, url in enumerate(row["urls"]):
            target = directory / image_filename(stem, position, row["num"], url)
            if target.exists():
                present += 1
            else:
                try:
                    await client.download(url, target)
                    fetched += 1
                except (NanoBananaError, OSError) as exc:
                    failed += 1
                    error = f"could not download {url}: {exc}"
                    continue
            paths.append(str(target))
        await store.set_files(row["id"], paths, error)

    # ``concurrency`` downloaders in one task group, fed the rows as they are read: memory
    # stays flat however many rows the store holds.
    send, receive = anyio.create_memory_object_stream[dict[str, Any]]()

    async def downloader(rows: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        async with rows:
            async for row in rows:
                await one(row)

    async with anyio.create_task_group() as tg:
        async with receive:
            for _ in range(concurrency):
                tg.start_soon(downloader, receive.clone())
        async with send:
            async for row in store.rows(done_only=True):
                await send.send(row)
    return fetched, present, failed


def cmd_download(args: argparse.Namespace) -> int:
    import asyncio

    from rich.text import Text

    from ..client import AsyncNanoBanana

    store = open_sql_store(args.store, existing=True)
    directory = make_dir(args.output).resolve()  # recorded paths work from anywhere
    # Image URLs are plain GETs: the key goes only to the API's own origin, if it is given.
    key = args.api_key or os.environ.get("NANOBANANA_API_KEY") or "download-only"
    transport = None
    base_url = args.base_url
    if args.emulator:
        from ..emulator import Emulator

        transport, base_url = Emulator().transport(), EMULATOR_BASE_URL

    async def run() -> tuple[int, int, int]:
        async with AsyncNanoBanana(key, base_url=base_url, transport=transport) as client:
            return await _download(store, client, directory, max(1, args.concurrency))

    fetched, present, failed = asyncio.run(run())
    message = f"Downloaded {fetched} image(s) to {directory} ({present} already there"
    message += f", {failed} failed)." if failed else ")."
    console(stderr=True).print(Text(message))
    return EXIT_FAILED if failed else EXIT_OK
