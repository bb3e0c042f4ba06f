"""``--json`` on every listing and inspecting command: valid JSON with stable keys, secrets
redacted, control characters escaped as JSON escapes them."""

from __future__ import annotations

import asyncio
import json
from types import ModuleType

import pytest
from cli_support import ok, settle

from bgcoor_core import TaskStatus

HOSTILE = "\x1b[31mred\r\u202e"


def as_json(*args: str) -> object:
    text = ok(*args, "--json")
    assert not any(ch in text for ch in ("\x1b", "\r", "\u202e")), repr(text)
    return json.loads(text)


def test_status_json(shared: ModuleType) -> None:
    settle(shared.manager, ("add", 1, 2), ("explode",))
    data = as_json("status", "--app", "cli_app")
    assert isinstance(data, dict)
    assert list(data) == ["broker_url", "storage_url", "queues", "tasks", "total"]
    assert data["queues"]["default"] == {"ready": 0, "scheduled": 0, "reserved": 0, "dead": 1}
    assert data["queues"]["mail"]["ready"] == 0
    assert list(data["tasks"]) == [s.value for s in TaskStatus]  # every status, in order
    assert (data["tasks"]["succeeded"], data["tasks"]["dead"], data["total"]) == (1, 1, 2)


def test_status_json_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://:hunter2@h/0?password=hunter3")
    data = as_json("status")
    assert isinstance(data, dict)
    assert data["broker_url"] == "memory://:***@h/0?password=***"
    assert "hunter" not in json.dumps(data)


def test_dlq_list_json_escapes_control_characters(shared: ModuleType) -> None:
    (task_id,) = settle(shared.manager, ("explode", HOSTILE))
    data = as_json("dlq", "list", "--app", "cli_app")
    assert isinstance(data, dict)
    assert (data["queue"], data["total"]) == ("default", 1)
    [letter] = data["dead_letters"]
    assert list(letter) == ["id", "queue", "task", "attempts", "dead_at", "reason"]
    assert (letter["id"], letter["task"], letter["attempts"]) == (task_id, "explode", 1)
    assert letter["dead_at"].endswith("+00:00")
    record = asyncio.run(shared.manager.get(task_id))
    assert record.error == f"RuntimeError: {HOSTILE}"  # the same value, escaped in JSON


def test_plugins_json(shared: ModuleType) -> None:
    data = as_json("plugins", "--app", "cli_app")
    assert isinstance(data, dict)
    assert list(data) == ["plugins", "disabled", "failures", "tasks"]
    names = {p["name"]: p for p in data["plugins"]}
    assert "broker sharedmem://" in names["cli-test-sharedmem"]["provides"]
    assert names["memory"]["distribution"] == "bgcoor"
    tasks = {t["name"]: t for t in data["tasks"]}
    assert tasks["add"] == {
        "name": "add",
        "queue": "default",
        "priority": 0,
        "max_retries": None,
        "timeout": None,
        "runs": "def add(x: int, y: int) -> int",
    }
    assert as_json("plugins")["tasks"] is None  # type: ignore[index]


def test_tasks_json(shared: ModuleType) -> None:
    ids = settle(shared.manager, ("add", 1, 2), ("explode", HOSTILE))
    data = as_json("tasks", "--app", "cli_app")
    assert isinstance(data, dict)
    assert data["next_after"] is None
    assert [t["id"] for t in data["tasks"]] == sorted(ids)
    by_id = {t["id"]: t for t in data["tasks"]}
    assert list(by_id[ids[0]]) == [
        "id", "name", "status", "queue", "priority", "attempts", "max_retries",
        "created_at", "eta", "started_at", "finished_at", "error",
    ]  # fmt: skip
    assert by_id[ids[1]]["error"] == f"RuntimeError: {HOSTILE}"
    assert by_id[ids[0]]["status"] == "succeeded"
