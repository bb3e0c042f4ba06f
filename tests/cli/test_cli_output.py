"""Output for scripts: when stdout is not a terminal, table rows are never wrapped or
truncated (``bgcoor dlq list | grep mytask``); when stderr is not a terminal, the worker
log is one line per record with an ISO-8601 time."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cli_support import TESTS_DIR, ok, sqlite_env

from bgcoor_core import TaskManager, TaskRegistry
from bgcoor_core.cli._output import LineFormatter, logging_to_stderr

LONG_REASON = "upstream said no: " + "because " * 40 + "END"
ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")


def dead_letter(manager: TaskManager, name: str, reason: str) -> str:
    async def go() -> str:
        handle = await manager.enqueue(name, 1, 2)
        [reservation] = await manager.broker.reserve(["default"], lease=5.0)
        await manager.broker.dead_letter(reservation, reason)
        return handle.id

    return asyncio.run(go())


def test_rows_stay_whole_when_stdout_is_not_a_terminal(
    shared: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a narrow COLUMNS must not fold piped rows
    task_id = dead_letter(shared.manager, "add", LONG_REASON)
    out = ok("dlq", "list", "--app", "cli_app")
    [line] = [line for line in out.splitlines() if task_id in line]
    assert "add" in line
    assert LONG_REASON in line


def test_dlq_list_piped_into_grep_finds_the_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    monkeypatch.delenv("COLUMNS")
    manager = TaskManager(registry=_registry())
    task_id = dead_letter(manager, "reports.monthly_summary_for_every_tenant", LONG_REASON)
    manager.close_sync()
    listing = subprocess.run(
        [sys.executable, "-m", "bgcoor_core.cli", "dlq", "list"],
        capture_output=True, text=True, cwd=TESTS_DIR, check=True,
    )  # fmt: skip
    matches = [line for line in listing.stdout.splitlines() if "monthly_summary" in line]
    assert len(matches) == 1
    assert task_id in matches[0]
    assert "END" in matches[0]


def _registry() -> TaskRegistry:
    registry = TaskRegistry()
    registry.register("reports.monthly_summary_for_every_tenant", lambda x, y: None)
    return registry


def test_log_line_formatter_is_one_line_with_an_iso_time() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "bgcoor.executor", logging.ERROR, __file__, 1, "task %s\nfailed", ("t1",),
            sys.exc_info(),
        )  # fmt: skip
    line = LineFormatter().format(record)
    assert "\n" not in line
    assert ISO_LINE.match(line), line
    assert " ERROR bgcoor.executor: task t1\\nfailed\\nTraceback (most recent call last):" in line
    assert line.endswith("ValueError: bad\\nthing")


def test_worker_log_to_a_pipe_is_one_line_per_record(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # a fresh worker process: the CLI adds its own handler
    try:
        with logging_to_stderr("info"):
            logging.getLogger("bgcoor.test").info("word " * 40)
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ISO_LINE.match(err), err
