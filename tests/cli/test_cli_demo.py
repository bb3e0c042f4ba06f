"""``bgcoor demo``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import (
    cli,
    ok,
    row,
    sqlite_env,
)

# -- demo --------------------------------------------------------------------------


def summary(out: str) -> dict[str, str]:
    keys = ["tasks", "succeeded", "retried", "retries", "dead-lettered", "tasks per second"]
    return {key: row(out, key)[0] for key in keys}


def test_demo_runs_to_completion_with_retries_and_dead_letters() -> None:
    result = cli("demo", "--tasks", "40", "--concurrency", "8")
    assert result.exit_code == 0, result.output
    numbers = summary(result.stdout)
    # 40 tasks: 2 always fail (3 attempts each), 6 fail once, the rest succeed at once
    assert {k: numbers[k] for k in list(numbers)[:5]} == {
        "tasks": "40",
        "succeeded": "38",
        "retried": "8",
        "retries": "10",
        "dead-lettered": "2",
    }
    assert float(numbers["tasks per second"]) > 0
    bar = [line for line in result.stderr.splitlines() if line.startswith("running")]
    assert len(bar) == 1  # the final state of the progress bar (stderr is not a terminal)
    assert "40/40" in bar[0]


def test_demo_reruns_cleanly_on_a_persistent_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    for _ in range(2):
        out = ok("demo", "--tasks", "20", "--concurrency", "8")
        assert summary(out)["succeeded"] == "19"
        assert summary(out)["dead-lettered"] == "1"
    assert "dlq list --queue demo" in out
    dead = ok("dlq", "list", "--queue", "demo")
    assert dead.count("demo.broken") == 1  # the first run's dead letter was purged
