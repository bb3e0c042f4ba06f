"""``bgcoor tasks``: records by status, name and queue, paged through the storage in
bounded pages; ``bgcoor cancel`` and ``bgcoor purge``."""

from __future__ import annotations

import asyncio
import json
from types import ModuleType
from typing import Any

import pytest
from cli_support import cli, fails, ok, record, row, settle, stats

from bgcoor_core import TaskStatus
from bgcoor_core.cli import _records


def listed(*args: str) -> list[dict[str, Any]]:
    data = json.loads(ok("tasks", "--app", "cli_app", "--json", *args))
    return data["tasks"]  # type: ignore[no-any-return]


def test_failed_tasks_are_found_by_status(shared: ModuleType) -> None:
    manager = shared.manager
    ok_id, dead_id = settle(manager, ("add", 1, 2), ("explode", "kaboom"))  # no retries
    out = ok("tasks", "--status", "dead", "--app", "cli_app")
    assert row(out, dead_id)[:4] == ["explode", "dead", "default", "1"]
    assert row(out, dead_id)[-1] == "RuntimeError: kaboom"
    assert ok_id not in out
    assert [t["id"] for t in listed("--status", "succeeded")] == [ok_id]
    assert [t["id"] for t in listed("--status", "SUCCEEDED")] == [ok_id]  # any case


def test_filters_by_name_and_queue(shared: ModuleType) -> None:
    manager = shared.manager

    async def enqueue() -> list[str]:
        a = await manager.enqueue("add", 1, 2)
        g = await manager.enqueue("greet", "ada")  # queue mail
        return [a.id, g.id]

    add_id, greet_id = asyncio.run(enqueue())
    assert [t["id"] for t in listed("--name", "add")] == [add_id]
    assert [t["id"] for t in listed("--queue", "mail")] == [greet_id]
    assert listed("--queue", "mail", "--name", "add") == []
    assert "no tasks match" in ok("tasks", "--name", "nope", "--app", "cli_app")


def test_limit_pages_and_continues_after(
    shared: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = shared.manager
    ids = sorted(settle(manager, *[("add", i, i) for i in range(7)], drain=False))
    asked: list[int] = []
    real_list = manager.storage.list

    async def counting_list(**kwargs: Any) -> Any:
        asked.append(kwargs["limit"])
        return await real_list(**kwargs)

    monkeypatch.setattr(manager.storage, "list", counting_list)
    monkeypatch.setattr(_records, "PAGE", 2)
    out = ok("tasks", "--limit", "5", "--app", "cli_app")
    shown = [i for i in ids if i in out]
    assert shown == ids[:5]
    assert f"showing the first 5; continue with --after {ids[4]}" in out
    assert max(asked) <= 2  # bounded pages, never the whole listing at once
    rest = listed("--after", ids[4])
    assert [t["id"] for t in rest] == ids[5:]
    data = json.loads(ok("tasks", "--limit", "3", "--json", "--app", "cli_app"))
    assert data["next_after"] == ids[2]


def test_tasks_usage_errors() -> None:
    assert "'--status'" in fails("tasks", "--status", "lost", code=2)
    assert "0 is out of range" in fails("tasks", "--limit", "0", code=2)
    assert "invalid task id 'a b'" in fails("tasks", "--after", "a b", code=2)
    assert "invalid queue name" in fails("tasks", "--queue", "no/slash", code=2)


# -- cancel ----------------------------------------------------------------------------


def test_cancel_a_pending_task_and_report_finished_or_unknown_ones(shared: ModuleType) -> None:
    manager = shared.manager
    (done,) = settle(manager, ("add", 1, 2))
    (waiting,) = settle(manager, ("add", 3, 4), drain=False)
    result = cli("cancel", waiting, done, "missing-id", "--app", "cli_app")
    assert result.exit_code == 1
    assert result.stdout.strip() == f"cancelled {waiting}"
    assert result.stderr.strip() == (
        f"error: not cancelled: {done} already ended succeeded; missing-id unknown or expired"
    )
    assert record(manager, waiting).status is TaskStatus.CANCELLED
    settle(manager)  # a worker now finds it cancelled and does not run it
    assert record(manager, waiting).status is TaskStatus.CANCELLED
    assert record(manager, waiting).result is None
    assert "Missing argument" in fails("cancel", code=2)


# -- purge -----------------------------------------------------------------------------


def test_purge_asks_unless_yes_and_keeps_dead_letters(shared: ModuleType) -> None:
    manager = shared.manager
    settle(manager, ("explode",))
    settle(manager, ("add", 1, 2), ("add", 3, 4), drain=False)
    asyncio.run(shared.add.options(delay=60).enqueue(5, 6))
    line = fails("purge", "--queue", "default", "--app", "cli_app", input="n\n")
    assert line == "error: nothing purged (not confirmed; pass --yes to skip the question)"
    assert stats(manager).ready == 2
    result = cli("purge", "--queue", "default", "--app", "cli_app", input="y\n")
    assert result.exit_code == 0, result.output
    assert "Delete 3 waiting task(s) from 'default' for good?" in result.stdout
    assert "purged 3 waiting task(s) from 'default'" in result.stdout
    after = stats(manager)
    assert (after.ready, after.scheduled, after.dead) == (0, 0, 1)
    assert ok("purge", "-q", "default", "--yes", "--app", "cli_app").strip() == (
        "purged 0 waiting task(s) from 'default'"
    )


def test_purge_needs_a_queue() -> None:
    assert "Missing option '--queue'" in fails("purge", "--yes", code=2)
