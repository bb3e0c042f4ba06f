"""``bgcoor inspect`` shows a failed task's structured failure (type, module, message,
causes, traceback) from the record alone, never importing the exception's class."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cli_support import field, ok, record, settle

from bgcoor_core import Task, TaskManager, TaskStatus


class LedgerError(Exception):
    """What the chained task raises last."""


def _post_entry() -> None:
    try:
        try:
            int("twelve")
        except ValueError:
            raise KeyError("ledger 7")  # noqa: B904 - raised while handling: a context
    except KeyError as exc:
        raise LedgerError("entry refused\nsecond line") from exc


def _failed(manager: TaskManager) -> str:
    manager.task(name="post_entry", max_retries=0)(_post_entry)
    (task_id,) = settle(manager, ("post_entry",))
    return task_id


def test_inspect_shows_type_module_message_and_causes(shared: ModuleType) -> None:
    task_id = _failed(shared.manager)
    out = ok("inspect", task_id, "--app", "cli_app")
    assert field(out, "status") == "dead"
    assert field(out, "error") == "LedgerError: entry refused\\nsecond line"
    assert field(out, "type") == "LedgerError"
    assert field(out, "module") == __name__
    assert field(out, "message") == "entry refused"
    assert "second line" in out.split("message", 1)[1].splitlines()[1]  # kept as a line
    assert field(out, "caused by") == "KeyError: 'ledger 7'"
    assert field(out, "while handling") == (
        "ValueError: invalid literal for int() with base 10: 'twelve'"
    )
    assert out.index("caused by") < out.index("while handling")  # nearest first
    assert "Traceback (most recent call last):" in out
    assert "in _post_entry" in out


def test_inspect_json_includes_the_structured_failure(shared: ModuleType) -> None:
    task_id = _failed(shared.manager)
    data = json.loads(ok("inspect", task_id, "--json", "--app", "cli_app"))
    failure = data["failure"]
    assert (failure["type"], failure["module"], failure["message"]) == (
        "LedgerError",
        __name__,
        "entry refused\nsecond line",
    )
    assert [(c["type"], c["implicit"]) for c in failure["causes"]] == [
        ("KeyError", False),
        ("ValueError", True),
    ]
    assert "in _post_entry" in failure["traceback"]
    assert failure["causes_clipped"] is False
    assert data["error"] == "LedgerError: entry refused\nsecond line"


def test_inspect_never_imports_the_exception_class(
    shared: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record naming a class in a module this process has not imported (here, one that
    would leave a file behind if it were imported) is shown all the same."""
    (tmp_path / "bgcoor_remote_errors.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'a').close()\n"
        "class RemoteError(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    stored = record(shared.manager, _failed(shared.manager))
    assert stored.failure is not None
    failure = stored.failure.model_copy(
        update={"module": "bgcoor_remote_errors", "type": "RemoteError", "traceback": ""}
    )
    copy = Task.new(
        "post_entry", status=stored.status, error="RemoteError: far away", failure=failure
    )
    asyncio.run(shared.manager.storage.save(copy))
    out = ok("inspect", copy.id, "--app", "cli_app")
    assert field(out, "type") == "RemoteError"
    assert field(out, "module") == "bgcoor_remote_errors"
    assert field(out, "caused by") == "KeyError: 'ledger 7'"
    assert "traceback" not in out  # neither the record's nor the failure's has one
    assert "bgcoor_remote_errors" not in sys.modules
    assert not (tmp_path / "imported").exists()


def test_inspect_a_task_dead_without_an_exception_shows_its_error_only(
    shared: ModuleType,
) -> None:
    lost = Task.new("add", status=TaskStatus.DEAD, error="worker_lost: the worker died 4 times")
    asyncio.run(shared.manager.storage.save(lost))
    out = ok("inspect", lost.id, "--app", "cli_app")
    assert field(out, "error") == "worker_lost: the worker died 4 times"
    assert not any(
        line.startswith(("type ", "module ", "message ", "caused by ", "traceback"))
        for line in out.splitlines()
    )
