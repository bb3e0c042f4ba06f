"""``bgcoor worker`` and ``bgcoor migrate``, in real processes."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from cli_support import (
    TASKS,
    TESTS_DIR,
    Subprocess,
    field,
    ok,
    row,
    runner,
    sqlite_env,
)

from bgcoor_core import __version__
from bgcoor_core.cli import app

# -- worker (real processes) -------------------------------------------------------


def test_worker_banner_and_graceful_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://user:hunter2@localhost")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://?password=hunter3&x=1")
    worker = Subprocess("worker", "cli_app", "--concurrency", "3", "--queues", "default,mail")
    worker.wait_ready()
    worker.proc.send_signal(signal.SIGTERM)
    code, out, err = worker.finish()
    assert code == 0, err
    assert f"bg-coor {__version__} worker" in out
    assert re.search(r"^broker +memory://user:\*\*\*@localhost\s*$", out, re.MULTILINE)
    assert re.search(r"^storage +memory://\?password=\*\*\*&x=1\s*$", out, re.MULTILINE)
    assert re.search(r"^queues +default, mail\s*$", out, re.MULTILINE)
    assert re.search(r"^concurrency +3\s*$", out, re.MULTILINE)
    assert re.search(rf"^tasks \(5\) +{TASKS}\s*$", out, re.MULTILINE)
    assert re.search(r"^plugins +.*memory \(bgcoor [\d.]+\)", out, re.MULTILINE)
    assert "worker stopped after 0 task(s)" in out
    assert "hunter2" not in out + err
    assert "Traceback" not in err


def test_worker_with_an_unknown_app_fails_in_one_line() -> None:
    code, out, err = Subprocess("worker", "no_such_app_module").finish()
    assert code == 1
    assert err.splitlines() == [
        f"error: cannot import APP module 'no_such_app_module': no module named "
        f"'no_such_app_module' (searched the current directory {TESTS_DIR} and sys.path)"
    ]
    assert out == ""


def test_worker_runs_what_another_process_enqueues(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    worker = Subprocess("worker", "cli_app:manager", "--queues", "default,mail")
    worker.wait_ready()
    try:
        out = ok("enqueue", "cli_app", "add", "--args", "[2, 3]", "--wait", "--timeout", "10")
        task_id, result = out.split()
        assert result == "5"
        assert row(ok("status"), "succeeded") == ["1"]
        assert field(ok("inspect", task_id), "status") == "succeeded"
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        code, out, err = worker.finish()
    assert code == 0, err
    assert "worker stopped after 1 task(s)" in out


def test_worker_second_sigint_forces_and_hands_the_task_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    worker = Subprocess("worker", "cli_app")
    worker.wait_ready()
    task_id = ok("enqueue", "cli_app", "sleepy", "--args", "[30]").strip()
    deadline = time.monotonic() + 10
    while field(ok("inspect", task_id), "status") != "running":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    worker.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert worker.proc.poll() is None  # graceful: waits for the running task
    worker.proc.send_signal(signal.SIGINT)
    code, _, err = worker.finish(timeout=10)
    assert code == 0, err
    assert row(ok("status"), "default")[0] == "1"  # handed back: ready for the next worker


def test_migrate_reports_applied_then_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    env = {"BGCOOR_BROKER_URL": url, "BGCOOR_STORAGE_URL": url}
    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "schema version 1" in first.output
    second = runner.invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0, second.output
    assert "schema is up to date" in second.output
