"""``bgcoor inspect``."""

from __future__ import annotations

import json
import re
from types import ModuleType

from cli_support import (
    cli,
    fails,
    field,
    ok,
    settle,
)

# -- inspect -----------------------------------------------------------------------


def test_inspect_a_succeeded_task(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("add", 2, 3))
    out = ok("inspect", task_id, "--app", "cli_app")
    assert field(out, "id") == task_id
    assert field(out, "name") == "add"
    assert field(out, "status") == "succeeded"
    assert field(out, "attempts") == "1 (max retries 3)"
    assert field(out, "result") == "5"
    assert field(out, "payload") == '{"args": [2, 3], "kwargs": {}}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", field(out, "finished"))


def test_inspect_a_dead_task_shows_error_and_traceback(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("explode", "kaboom"))
    out = ok("inspect", task_id, "--app", "cli_app")
    assert field(out, "status") == "dead"
    assert field(out, "error") == "RuntimeError: kaboom"
    assert "Traceback (most recent call last):" in out
    assert "raise RuntimeError(message)" in out  # the task's own frame, from cli_app.py


def test_inspect_json_is_the_whole_record(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("add", 2, 3))
    data = json.loads(ok("inspect", task_id, "--json", "--app", "cli_app"))
    assert (data["id"], data["status"], data["result"], data["attempts"]) == (
        task_id,
        "succeeded",
        5,
        1,
    )


def test_inspect_unknown_id() -> None:
    assert fails("inspect", "nope") == "error: no task with id 'nope' (unknown or expired)"


def test_debug_shows_the_traceback() -> None:
    result = cli("--debug", "inspect", "nope")
    assert result.exit_code == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert "TaskNotFoundError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no task with id 'nope' (unknown or expired)"
    )
