"""``bgcoor enqueue``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import ModuleType

import pytest
from cli_support import (
    TASKS,
    cli,
    fails,
    ok,
    record,
    stats,
    worker_thread,
)

from bgcoor_core import TaskStatus

# -- enqueue -----------------------------------------------------------------------


def test_enqueue_prints_the_id_of_the_stored_task(shared: ModuleType) -> None:
    task_id = ok("enqueue", "cli_app", "add", "--args", "[2, 3]").strip()
    task = record(shared.manager, task_id)
    assert (task.name, task.status, task.queue) == ("add", TaskStatus.PENDING, "default")
    assert task.payload == {"args": [2, 3], "kwargs": {}}
    assert task.max_retries == 3  # the settings' default, as TaskFunction.build does
    assert stats(shared.manager).ready == 1


def test_enqueue_overrides_queue_priority_and_delay(shared: ModuleType) -> None:
    before = datetime.now(UTC)
    task_id = ok(
        "enqueue", "cli_app:manager", "greet", "--kwargs", '{"name": "ada"}',
        "--queue", "urgent", "--priority", "5", "--delay", "60",
    ).strip()  # fmt: skip
    task = record(shared.manager, task_id)
    assert (task.queue, task.priority, task.status) == ("urgent", 5, TaskStatus.SCHEDULED)
    assert task.payload == {"args": ["ada"], "kwargs": {}}  # bound to the signature
    assert 55 <= (task.eta - before).total_seconds() <= 65
    assert stats(shared.manager, "urgent").scheduled == 1
    assert stats(shared.manager, "mail").ready == 0  # not the task's own queue


def test_enqueue_takes_any_declared_call_option(shared: ModuleType) -> None:
    before = datetime.now(UTC)
    task_id = ok(
        "enqueue", "cli_app", "add", "--args", "[1, 2]",
        "--option", 'headers={"tenant": "t-42"}', "-o", "expires=60", "-o", "result_ttl=30",
    ).strip()  # fmt: skip
    task = record(shared.manager, task_id)
    assert task.headers == {"tenant": "t-42"}
    assert task.result_ttl == 30
    assert task.expires is not None
    assert 55 <= (task.expires - before).total_seconds() <= 65


@pytest.mark.parametrize(
    ("option", "problem", "code"),
    [
        ("expire=60", "unknown option 'expire'; did you mean 'expires'?", 1),
        ("expires=nan", "expires=nan is out of range", 1),
        ("noequals", "use NAME=VALUE", 2),
    ],
)
def test_enqueue_refuses_a_bad_call_option_by_name(
    shared: ModuleType, option: str, problem: str, code: int
) -> None:
    error = fails("enqueue", "cli_app", "add", "--args", "[1, 2]", "-o", option, code=code)
    assert problem in error
    assert stats(shared.manager).ready == 0


def test_enqueue_a_handler_object_takes_a_raw_payload(shared: ModuleType) -> None:
    task_id = ok("enqueue", "cli_app", "echo", "--payload", '{"rows": [1, 2]}').strip()
    assert record(shared.manager, task_id).payload == {"rows": [1, 2]}
    line = fails("enqueue", "cli_app", "echo", "--args", "[1]", code=2)
    assert "task 'echo' is a handler object that takes a raw payload: pass --payload" in line


def test_enqueue_wait_prints_the_result_as_json(shared: ModuleType) -> None:
    with worker_thread(shared):
        out = ok("enqueue", "cli_app", "greet", "--kwargs", '{"name": "ada"}', "--wait")
    task_id, result = out.strip().splitlines()
    assert json.loads(result) == {"greeting": "hello, ada!"}
    assert record(shared.manager, task_id).status is TaskStatus.SUCCEEDED


def test_enqueue_wait_reports_a_dead_task_in_one_line(shared: ModuleType) -> None:
    with worker_thread(shared):
        result = cli("enqueue", "cli_app", "explode", "--args", '["kaboom"]', "--wait")
    assert result.exit_code == 1
    task_id = result.stdout.strip()
    assert result.stderr.strip() == (
        f"error: task {task_id} ended dead: RuntimeError: kaboom "
        f"(details: bgcoor inspect {task_id})"
    )


def test_enqueue_wait_times_out_with_a_hint() -> None:
    line = fails("enqueue", "cli_app", "add", "--args", "[1, 2]", "--wait", "--timeout", "0.1")
    assert "did not finish within 0.1s; is a worker serving queue 'default'?" in line


@pytest.mark.parametrize(
    ("options", "code", "expected"),
    [
        (["--args", "[1, 2"], 2, "--args is not valid JSON (Expecting ',' delimiter"),
        (["--args", '{"x": 1}'], 2, "--args must be a JSON list, got an object"),
        (["--kwargs", "[1]"], 2, "--kwargs must be a JSON object, got a list"),
        (["--kwargs", "nope"], 2, "--kwargs is not valid JSON"),
        (["--payload", "{}"], 2, "task 'add' is a function: pass --args/--kwargs"),
        (["--args", "[1, 2]", "--timeout", "1"], 2, "--timeout only applies with --wait"),
        (["--args", '["one", 2]'], 1, "task 'add': argument 'x': Input should be"),
        (["--args", "[1]"], 1, "task 'add': missing a required argument: 'y'"),
        (["--args", "[1, 2]", "--priority", "x"], 2, "Invalid value for '--priority' / '-p'"),
        # Out of range: a usage error naming the range, never "unexpected OverflowError".
        (["--args", "[1, 2]", "--delay", "inf"], 2, "inf is out of range: use 0 to 315360000"),
        (["--args", "[1, 2]", "--delay", "nan"], 2, "nan is out of range: use 0 to 315360000"),
        (["--args", "[1, 2]", "--delay", "1e12"], 2, "1e+12 is out of range: use 0 to"),
        (["--args", "[1, 2]", "--delay", "-1"], 2, "-1 is out of range: use 0 to"),
        (["--args", "[1, 2]", "--priority", "5000"], 2, "5000 is out of range: use -1000 to 1000"),
        (["--args", "[1, 2]", "--wait", "--timeout", "inf"], 2, "inf is out of range: use 0 to"),
    ],
)
def test_enqueue_rejects_bad_arguments_before_enqueueing(
    shared: ModuleType, options: list[str], code: int, expected: str
) -> None:
    assert expected in fails("enqueue", "cli_app", "add", *options, code=code)
    counts = asyncio.run(shared.manager.storage.counts())
    assert sum(counts.values()) == 0
    assert stats(shared.manager).ready == 0


def test_enqueue_unknown_task_lists_the_registered_ones() -> None:
    line = fails("enqueue", "cli_app", "nope")
    assert line == f"error: unknown task 'nope'; registered tasks: {TASKS}"
