"""``bgcoor dlq``."""

from __future__ import annotations

from types import ModuleType

from cli_support import (
    cli,
    fails,
    ok,
    record,
    row,
    settle,
    stats,
)

from bgcoor_core import TaskStatus

# -- dlq ---------------------------------------------------------------------------


def test_dlq_list(shared: ModuleType) -> None:
    ids = settle(shared.manager, ("explode", "one"), ("explode", "two"), ("add", 1, 1))
    out = ok("dlq", "list", "--app", "cli_app")
    for task_id in ids[:2]:
        assert row(out, task_id)[:2] == ["explode", "1"]  # task, attempts
        assert row(out, task_id)[-1] == "max_retries exceeded (0)"
    assert ids[2] not in out
    assert "the dead-letter queue of 'mail' is empty" in ok(
        "dlq", "list", "--queue", "mail", "--app", "cli_app"
    )


def test_dlq_requeue_ids_gives_one_more_attempt(shared: ModuleType) -> None:
    manager = shared.manager
    first, second = settle(manager, ("explode",), ("explode",))
    out = ok("dlq", "requeue", first, "--app", "cli_app")
    assert out.splitlines() == [first, "requeued 1 task(s) into 'default'"]
    assert record(manager, first).status is TaskStatus.PENDING  # storage reset too
    assert record(manager, second).status is TaskStatus.DEAD
    assert (stats(manager).ready, stats(manager).dead) == (1, 1)
    settle(manager)  # run it: it fails again and is dead once more, after a second attempt
    assert (record(manager, first).status, record(manager, first).attempts) == (TaskStatus.DEAD, 2)


def test_dlq_requeue_all(shared: ModuleType) -> None:
    ids = settle(shared.manager, ("explode",), ("explode",), ("explode",))
    out = ok("dlq", "requeue", "--all", "--app", "cli_app")
    assert sorted(out.splitlines()[:-1]) == sorted(ids)
    assert out.splitlines()[-1] == "requeued 3 task(s) into 'default'"
    assert (stats(shared.manager).ready, stats(shared.manager).dead) == (3, 0)


def test_dlq_requeue_reports_ids_not_in_the_queue(shared: ModuleType) -> None:
    (dead,) = settle(shared.manager, ("explode",))
    result = cli("dlq", "requeue", dead, "missing-id", "--app", "cli_app")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [dead, "requeued 1 task(s) into 'default'"]
    assert result.stderr.strip() == "error: not in the dead-letter queue of 'default': missing-id"


def test_dlq_purge_asks_unless_yes(shared: ModuleType) -> None:
    settle(shared.manager, ("explode",), ("explode",))
    line = fails("dlq", "purge", "--app", "cli_app", input="n\n")
    assert line == "error: nothing purged (not confirmed; pass --yes to skip the question)"
    assert stats(shared.manager).dead == 2
    result = cli("dlq", "purge", "--app", "cli_app", input="y\n")
    assert result.exit_code == 0
    assert "Delete 2 dead letter(s) from 'default' for good?" in result.stdout
    assert "purged 2 dead letter(s) from 'default'" in result.stdout
    assert stats(shared.manager).dead == 0
    settle(shared.manager, ("explode",))
    assert ok("dlq", "purge", "--yes", "--app", "cli_app").strip() == (
        "purged 1 dead letter(s) from 'default'"
    )
