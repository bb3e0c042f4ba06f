"""``bgcoor worker --burst`` and ``--reload``, and what the banner says about the backends
(a SQLite file by its absolute path; a warning when results stay local to the worker)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from cli_support import Subprocess, fails, ok, row, sqlite_env, write_module

from bgcoor_core.cli._banner import local_results_warning, shown_url


def test_burst_runs_what_is_queued_then_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    for i in range(3):
        ok("enqueue", "cli_app", "add", "--args", f"[{i}, 1]")
    code, out, err = Subprocess("worker", "cli_app", "--burst").finish(timeout=30)
    assert code == 0, err
    assert "worker stopped after 3 task(s)" in out
    assert row(ok("status"), "succeeded") == ["3"]


def test_banner_shows_the_sqlite_file_by_absolute_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("bgcoor_core.backends.sqlite")
    monkeypatch.setenv("BGCOOR_BROKER_URL", "sqlite:///work.db")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "sqlite:///work.db")
    write_module(
        tmp_path, "burst_app", "from bgcoor_core import TaskManager\nmanager = TaskManager()"
    )
    code, out, err = Subprocess("worker", "burst_app", "--burst", cwd=tmp_path).finish()
    assert code == 0, err
    path = re.escape(str(tmp_path / "work.db"))
    assert re.search(rf"^broker +sqlite:///work\.db \({path}\)\s*$", out, re.MULTILINE), out
    assert re.search(rf"^storage +sqlite:///work\.db \({path}\)\s*$", out, re.MULTILINE)
    assert "warning" not in out


def test_banner_warns_when_a_server_broker_keeps_results_in_a_local_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("bgcoor_core.backends.sqlite")
    # cli_app's plugin scheme: in-process, but the CLI cannot tell it from a server's
    monkeypatch.setenv("BGCOOR_BROKER_URL", "sharedmem://")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", f"sqlite:///{tmp_path}/local.db")
    code, out, err = Subprocess("worker", "cli_app", "--burst").finish()
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("warning"))
    assert f"task records and results are kept in {tmp_path}/local.db" in line
    assert "producers on other machines will never see them" in line
    assert "BGCOOR_STORAGE_URL" in err  # logged too, for log collectors


@pytest.mark.parametrize(
    ("broker", "storage", "warns"),
    [
        ("redis://h/0", "sqlite:///x.db", True),
        ("postgresql://h/db", "memory://", True),
        ("redis://h/0", "redis://h/0", False),
        ("sqlite:///x.db", "sqlite:///x.db", False),
        ("memory://", "sqlite:///x.db", False),
    ],
)
def test_local_results_warning(broker: str, storage: str, warns: bool) -> None:
    assert (local_results_warning(broker, storage) is not None) == warns


def test_shown_url_redacts_and_resolves_sqlite_paths() -> None:
    assert shown_url("sqlite:///a.db") == f"sqlite:///a.db ({os.path.abspath('a.db')})"
    assert shown_url("sqlite:////srv/a.db") == "sqlite:////srv/a.db"  # already absolute
    assert shown_url("sqlite:///:memory:") == "sqlite:///:memory:"
    assert shown_url("redis://:pw@h/0") == "redis://:***@h/0"


# -- reload ----------------------------------------------------------------------------

RELOAD_APP = """
from bgcoor_core import TaskManager

VERSION = {version}
print("app version", VERSION, flush=True)
manager = TaskManager()
"""


def test_reload_restarts_the_worker_when_a_python_file_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("watchfiles")
    monkeypatch.setenv("BGCOOR_SHUTDOWN_GRACE", "1")
    app = tmp_path / "reload_app.py"
    app.write_text(RELOAD_APP.format(version=1))
    worker = Subprocess("worker", "reload_app", "--reload", cwd=tmp_path)
    try:
        worker.wait_ready()
        (tmp_path / "notes.txt").write_text("not Python: ignored")
        app.write_text(RELOAD_APP.format(version=2))
        deadline = time.monotonic() + 20
        while worker.readies < 2:
            assert time.monotonic() < deadline, "".join(worker.out + worker.err)
            time.sleep(0.05)
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        code, out, err = worker.finish(timeout=20)
    assert code == 0, err
    assert "app version 1" in out
    assert "app version 2" in out
    assert "reload: reload_app.py changed; restarting the worker" in err
    assert "notes.txt" not in err


def test_reload_without_watchfiles_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails as if not installed
    line = fails("worker", "cli_app", "--reload")
    assert line == "error: --reload needs the watchfiles package: pip install 'bgcoor[reload]'"


def test_reload_and_burst_do_not_go_together() -> None:
    assert "--reload and --burst do not go together" in fails(
        "worker", "cli_app", "--reload", "--burst", code=2
    )
