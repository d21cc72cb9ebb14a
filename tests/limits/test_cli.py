"""``--limits URL`` on the command line and ``nanobanana limits [reset]`` on a real Redis."""

from __future__ import annotations

import json
import pathlib

from tests.cli.test_cli import PROMPTS, assert_clean_error, cli_env, run_cli
from tests.support.redis_server import RedisServer


def test_batch_and_generate_share_the_limits_the_status_shows(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    url = f"{redis_url}?namespace={redis_server.namespace()}&max_credits=20&max_per_second=50"
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
    assert status["max_per_second"] == 50
    table = run_cli("limits", "--limits", url, cwd=tmp_path)
    assert "may have been spent" in table.stdout
    assert "50 starts/s" in table.stdout


def test_reset_asks_first(
    redis_server: RedisServer, redis_url: str, tmp_path: pathlib.Path
) -> None:
    url = f"{redis_url}?namespace={redis_server.namespace()}&max_credits=4"
    assert run_cli("generate", "x", "--emulator", "--limits", url, cwd=tmp_path).returncode == 0
    refused = run_cli("limits", "reset", "--limits", url, cwd=tmp_path)
    assert_clean_error(refused, 2, "pass --yes")
    done = run_cli("limits", "reset", "--yes", "--limits", url, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reset": True, "outstanding_reservations": 0}
    status = json.loads(run_cli("limits", "--json", "--limits", url, cwd=tmp_path).stdout)
    assert (status["spent"], status["left"]) == (0, 4)


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
        "not a number",
    )
    down = f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0"
    redis_server.stop()
    try:
        proc = run_cli("generate", "x", "--emulator", "--limits", down, cwd=tmp_path)
    finally:
        redis_server.start()
    assert_clean_error(proc, 1, "shared limits unavailable", "nothing was sent")
    assert "hunter2" not in proc.stderr + proc.stdout
