"""``--limits URL`` on the command line and ``nanobanana limits [create|reset]`` on a real
Redis."""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.cli.test_cli import PROMPTS, assert_clean_error, cli_env, run_cli
from tests.support.redis_server import RedisServer


def test_batch_and_generate_share_the_limits_the_status_shows(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    url = f"{redis_url}?namespace={redis_server.namespace()}&max_credits=20&max_per_second=50"
    created = run_cli("limits", "create", "--limits", url, "--json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    ledger = json.loads(created.stdout)["ledger"]
    batch = run_cli("batch", str(PROMPTS), "--emulator", "--yes", "--limits", url, cwd=tmp_path)
    assert batch.returncode == 1, batch.stderr  # jobs over the shared budget are skipped
    assert "Traceback" not in batch.stderr
    env = cli_env(NANOBANANA_LIMITS=url)
    refused = run_cli("generate", "one more", "--emulator", cwd=tmp_path, env=env)
    assert_clean_error(refused, 1, "shared max_credits", "nothing was sent")
    shown = run_cli("limits", "--json", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["spent"] == 20
    assert (status["max_credits"], status["left"], status["reserved"]) == (20, 0, 0)
    assert (status["max_per_second"], status["ledger"]) == (50, ledger)
    table = run_cli("limits", "--limits", url, cwd=tmp_path)
    assert "may have been spent" in table.stdout
    assert "50 starts/s" in table.stdout
    assert ledger in table.stdout


def test_the_status_shows_what_the_url_asks_for_beside_what_redis_holds(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    # Before any process used them, the caps of the URL are shown, not "none / none".
    url = f"{redis_url}?namespace={redis_server.namespace()}&max_per_second=20&max_credits=100"
    shown = run_cli("limits", "--json", "--limits", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["asked"] == {"max_per_second": 20, "max_credits": 100}
    assert (status["max_per_second"], status["max_credits"], status["ledger"]) == (None,) * 3
    table = run_cli("limits", "--limits", url, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    rate = next(line for line in table.stdout.splitlines() if "rate cap" in line)
    assert "none" in rate
    assert "20 starts/s" in rate
    budget = next(line for line in table.stdout.splitlines() if "max credits" in line)
    assert "none" in budget
    assert "100" in budget


def test_create_once_then_refused_then_replaced(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    url = f"{redis_url}?namespace={redis_server.namespace()}"
    needs = run_cli("limits", "create", "--limits", url, cwd=tmp_path)
    assert_clean_error(needs, 2, "needs a budget", "--max-credits")
    made = run_cli("limits", "create", "--limits", url, "--max-credits", "8", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "Created the credit ledger" in made.stderr
    again = run_cli("limits", "create", "--limits", url, "--max-credits", "8", cwd=tmp_path)
    assert_clean_error(again, 2, "already has a credit ledger", "--replace")
    asks = run_cli(
        "limits", "create", "--replace", "--limits", url, "--max-credits", "9", cwd=tmp_path
    )
    assert_clean_error(asks, 2, "pass --yes")
    replaced = run_cli(
        "limits",
        "create",
        "--replace",
        "--yes",
        "--json",
        "--limits",
        url,
        "--max-credits",
        "9",
        cwd=tmp_path,
    )
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout)["max_credits"] == 9
    status = json.loads(run_cli("limits", "--json", "--limits", url, cwd=tmp_path).stdout)
    assert (status["max_credits"], status["left"]) == (9, 9)


def test_reset_asks_first(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    url = f"{redis_url}?namespace={redis_server.namespace()}&max_credits=4"
    assert run_cli("limits", "create", "--limits", url, cwd=tmp_path).returncode == 0
    assert run_cli("generate", "x", "--emulator", "--limits", url, cwd=tmp_path).returncode == 0
    refused = run_cli("limits", "reset", "--limits", url, cwd=tmp_path)
    assert_clean_error(refused, 2, "pass --yes")
    done = run_cli("limits", "reset", "--yes", "--limits", url, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reset": True, "outstanding_reservations": 0}
    status = json.loads(run_cli("limits", "--json", "--limits", url, cwd=tmp_path).stdout)
    assert (status["spent"], status["left"]) == (0, 4)


def test_a_budget_without_a_ledger_is_one_line(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    url = f"{redis_url}?namespace={redis_server.namespace()}&max_credits=4"
    proc = run_cli("generate", "x", "--emulator", "--limits", url, cwd=tmp_path)
    assert_clean_error(proc, 1, "no credit ledger", "nanobanana limits create")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["max_credit", "max-credits", "MAX_CREDITS", "maxCredits"])
def test_a_misspelled_option_is_refused_naming_the_known_ones(
    redis_url: str, tmp_path: pathlib.Path, option: str
) -> None:
    url = f"{redis_url}?{option}=4"
    proc = run_cli("generate", "x", "--emulator", "--limits", url, cwd=tmp_path)
    assert_clean_error(proc, 2, f"unknown option {option!r}", "max_credits", "namespace")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_batch_with_unreachable_limits_fails_once_before_the_first_job(
    tmp_path: pathlib.Path,
) -> None:
    # One line, no job sent or reported, no gallery of failures.
    out = tmp_path / "out"
    proc = run_cli(
        "batch",
        str(PROMPTS),
        "--emulator",
        "--yes",
        "-o",
        str(out),
        "--limits",
        "redis://:hunter2-secret@127.0.0.1:1/0",
        cwd=tmp_path,
    )
    assert_clean_error(proc, 1, "shared limits unavailable at redis://:***@127.0.0.1:1/0")
    assert proc.stderr.count("shared limits unavailable") == 1, proc.stderr
    assert "prompts.txt:" not in proc.stderr  # no line per failed job
    assert "hunter2" not in proc.stderr + proc.stdout
    assert not (out / "index.html").exists()


def test_mistakes_and_outages_are_one_line(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    assert_clean_error(run_cli("limits", cwd=tmp_path), 2, "no limits to show")
    assert_clean_error(
        run_cli("limits", "--limits", "http://127.0.0.1:1", cwd=tmp_path), 2, "unix:// URL"
    )
    assert_clean_error(
        run_cli("limits", "--limits", f"{redis_url}?max_credits=lots", cwd=tmp_path),
        2,
        "max_credits='lots'",
        "is not valid",
    )
    down = f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0"
    redis_server.stop()
    try:
        proc = run_cli("generate", "x", "--emulator", "--limits", down, cwd=tmp_path)
    finally:
        redis_server.start()
    assert_clean_error(proc, 1, "shared limits unavailable", "nothing was sent")
    assert "hunter2" not in proc.stderr + proc.stdout
