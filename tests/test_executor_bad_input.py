"""Executor: bad input at the worker (unknown tasks, bad payloads, undecodable messages)."""

from __future__ import annotations

from typing import Any

import pytest
from executor_support import (
    Counter,
    assert_broker_empty,
    executor_for,
    record,
    run_to_end,
)

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Message,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    hookimpl,
)

# -- bad input at the worker -----------------------------------------------------------


async def test_unknown_task_is_dead_lettered_not_retried(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    registry.register("known", Counter())
    task = Task.new("not.registered.here", None, 5)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 1

    letters = await broker.dead_letters("default")
    assert len(letters) == 1
    assert letters[0].reason.startswith("unknown task 'not.registered.here'")
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert stored.attempts == 0
    assert stored.error is not None
    assert "unknown task" in stored.error
    await assert_broker_empty(broker, dead=1)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"args": ["seven", 2], "kwargs": {}}, "argument 'x'"),
        ({"args": [1], "kwargs": {}}, "missing a required argument: 'y'"),
        ({"args": [1, 2, 3], "kwargs": {}}, "too many positional arguments"),
        ({"args": [1, 2], "kwargs": {"z": 3}}, "unexpected keyword argument 'z'"),
        ("not the payload shape", "payload must be"),
    ],
)
async def test_bad_payload_is_dead_lettered_without_running(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    payload: Any,
    problem: str,
) -> None:
    calls = 0

    def add(x: int, y: int) -> int:
        nonlocal calls
        calls += 1
        return x + y

    registry.register("add", add)
    task = Task.new("add", payload, 5)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 1

    assert calls == 0
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    letters = await broker.dead_letters("default")
    assert letters[0].reason.startswith("bad payload: ")
    assert problem in letters[0].reason


async def test_unserialisable_result_is_a_clear_error(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    class Opaque:
        pass

    registry.register("opaque", Counter(lambda n: Opaque()))
    task = Task.new("opaque", None, 3)
    await broker.push(task)
    await run_to_end(broker, executor_for(broker, storage, registry, settings))
    stored = await record(storage, task)
    assert stored.status in (TaskStatus.DEAD, TaskStatus.FAILED)
    assert stored.result is None
    assert stored.error is not None
    assert "unserialisable result" in stored.error
    assert "Opaque" in stored.error


async def test_an_undecodable_message_is_dead_lettered_with_the_reason(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    await broker.push_messages([Message("garbage-1", "default", b"application/json\n{not json")])
    executor = executor_for(broker, storage, registry, settings)
    assert await run_to_end(broker, executor) == 1
    letters = await broker.dead_letters("default")
    assert [letter.id for letter in letters] == ["garbage-1"]
    assert "malformed message" in letters[0].reason
    await assert_broker_empty(broker, dead=1)


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCEEDED])
async def test_the_record_of_an_undecodable_message_is_marked_dead_unless_final(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    status: TaskStatus,
) -> None:
    """E.g. a producer whose serializer the worker does not accept: its record exists."""
    seen: list[tuple[str, str]] = []

    class Watch:
        @hookimpl
        def bgcoor_task_dead_lettered(self, task: Task, reason: str) -> None:
            seen.append((task.id, reason))

    task = Task.new("add", {"args": [1, 2], "kwargs": {}}, 3)
    await storage.save(task)
    if status is not TaskStatus.PENDING:
        await storage.save(task.model_copy(update={"status": TaskStatus.RUNNING}))
    if status is TaskStatus.SUCCEEDED:
        await storage.save(task.model_copy(update={"status": status, "result": 3}))
    before = await record(storage, task)
    await broker.push_messages([Message(task.id, "default", b"application/x-nope\n\x00")])
    executor = executor_for(broker, storage, registry, settings, Watch())
    assert await run_to_end(broker, executor) == 1
    [letter] = await broker.dead_letters("default")
    stored = await record(storage, task)
    if status is TaskStatus.SUCCEEDED:
        assert stored == before
        assert seen == []
    else:
        assert stored.status is TaskStatus.DEAD
        assert stored.error == f"undecodable message: {letter.reason}"
        assert stored.finished_at is not None
        assert seen == [(task.id, letter.reason)]
