"""``nanobanana batch --metrics-json FILE``: the run's figures as JSON, and retries by reason
in the summary."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator

import httpx
import pytest

from .test_cli import cli_env, run_cli, write

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def flaky_server() -> Iterator[str]:
    pytest.importorskip("uvicorn")
    from nanobanana_async.emulator import Emulator, Faults, serve

    faults = Faults(server_error_rate=0.3, rate_limit_rate=0.1, retry_after=0.01)
    emulator = Emulator(keys={KEY: 10_000}, faults=faults, seed=2)
    with serve(emulator, "127.0.0.1", 0) as running:
        yield str(running.base_url)


def test_metrics_json_has_the_summary_s_figures_and_retry_reasons(
    tmp_path: pathlib.Path, flaky_server: str
) -> None:
    write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(20)))
    env = cli_env(NANOBANANA_API_KEY=KEY, NANOBANANA_BASE_URL=flaky_server)
    proc = run_cli(
        "batch", "p.txt", "--yes", "-c", "4", "--metrics-json", "out/m.json", cwd=tmp_path, env=env
    )
    assert "Traceback" not in proc.stderr
    figures = json.loads((tmp_path / "out" / "m.json").read_text())
    server = httpx.get(f"{flaky_server}/_emulator/stats").json()

    assert figures["schema"] == 1
    assert figures["source"] == "p.txt"
    assert figures["jobs"] == figures["finished"] == 20
    assert figures["not_run"] == 0
    assert figures["succeeded"] + figures["failed"] + figures["skipped"] == 20
    assert proc.returncode == (0 if figures["succeeded"] == 20 else 1)
    assert figures["credits"]["estimated"] == 40
    assert figures["credits"]["spent"] == server["credits_charged"] == 2 * figures["succeeded"]
    assert figures["requests"]["total"] == server["generate_requests"]
    assert sum(figures["requests"]["by_outcome"].values()) == figures["requests"]["total"]
    assert figures["requests"]["by_outcome"]["success"] == figures["succeeded"]
    retries = figures["retries"]
    assert retries["total"] == sum(retries["by_reason"].values()) > 0
    assert set(retries["by_reason"]) <= {"server_error", "rate_limited"}
    latency = figures["requests"]["latency_s"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert figures["job_latency_s"]["p50"] <= figures["job_latency_s"]["p99"]

    # The summary shows the same retries, by reason.
    row = next(line for line in proc.stderr.splitlines() if line.strip().startswith("retries"))
    assert str(retries["total"]) in row
    for reason, count in retries["by_reason"].items():
        assert re.search(rf"\b{reason} {count}\b", row), row


def test_metrics_json_of_a_clean_run_on_the_emulator(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\nan owl\n")
    proc = run_cli(
        "batch", "p.txt", "--emulator", "--yes", "--metrics-json", "m.json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures["emulator"] is True
    assert (figures["succeeded"], figures["failed"], figures["skipped"]) == (2, 0, 0)
    assert figures["retries"] == {"total": 0, "by_reason": {}}
    assert figures["requests"]["by_outcome"] == {"success": 2}
    assert figures["credits"] == {"estimated": 4, "spent": 4, "may_have_been_spent": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "p.txt"]  # no temp file


def test_metrics_json_that_cannot_be_written_is_a_clean_error(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "p.txt", "a fox\n")
    write(tmp_path / "taken", "a file, not a directory")
    proc = run_cli(
        "batch", "p.txt", "--emulator", "--yes", "--metrics-json", "taken/m.json", cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--metrics-json" in proc.stderr
