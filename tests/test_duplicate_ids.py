"""A task id is used once: a new message reusing a finished task's id is refused at
enqueue, or, pushed past the manager, dead-lettered with the reason; never acked unrun."""

from __future__ import annotations

import pytest

from bgcoor_core import (
    CorruptRecordError,
    DuplicateTaskError,
    Executor,
    MemoryBroker,
    MemoryStorage,
    Reservation,
    Settings,
    Task,
    TaskManager,
    TaskRegistry,
    TaskStatus,
)

Q = ["default"]


async def _settle_one(broker: MemoryBroker, executor: Executor) -> Reservation:
    got = await broker.reserve(Q, lease=5.0, limit=1, timeout=2.0)
    assert len(got) == 1
    await executor.execute(got[0])
    return got[0]


async def test_enqueue_refuses_the_id_of_a_finished_task(manager: TaskManager) -> None:
    @manager.task(name="jobs.add")
    def add(x: int, y: int) -> int:
        return x + y

    handle = await add.enqueue(1, 2)
    await manager.drain()
    done = await manager.get(handle.id)
    assert done.status is TaskStatus.SUCCEEDED
    again = Task(id=handle.id, name="jobs.add", payload={"args": [5, 5], "kwargs": {}})
    with pytest.raises(DuplicateTaskError, match=handle.id):
        await manager.submit(again)
    assert (await manager.get(handle.id)).result == 3  # the finished record is untouched
    assert await manager.broker.queue_length("default") == 0


@pytest.mark.parametrize("final", [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD])
async def test_a_fresh_message_for_a_finished_task_is_dead_lettered_not_dropped(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    final: TaskStatus,
) -> None:
    calls: list[int] = []
    registry.register("work", lambda: calls.append(1))
    task = Task.new("work")
    await storage.save(task.model_copy(update={"status": final, "error": "earlier"}))
    await broker.push(task)  # past the manager, as another producer or a bug might
    await _settle_one(broker, Executor(broker, storage, registry, settings))
    assert calls == []
    letters = await broker.dead_letters("default")
    assert [d.id for d in letters] == [task.id]
    assert "duplicate message" in letters[0].reason
    assert str(final) in letters[0].reason
    stored = await storage.get(task.id)
    assert stored is not None
    assert stored.status is final  # the finished record is not rewritten


async def test_a_redelivery_after_a_lost_lease_of_a_finished_task_is_still_acked(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    """Its earlier delivery stored the outcome, then its worker died before the ack."""
    registry.register("work", lambda: None)
    task = Task.new("work")
    await storage.save(task)
    await broker.push(task)
    first = await broker.reserve(Q, lease=0.05, limit=1, timeout=1.0)
    assert first
    await storage.save(task.started(first[0].token, task.created_at))
    await storage.save(task.model_copy(update={"status": TaskStatus.SUCCEEDED}))
    again = await broker.reserve(Q, lease=5.0, limit=1, timeout=2.0)
    assert again
    assert again[0].lost == 1
    await Executor(broker, storage, registry, settings).execute(again[0])
    assert await broker.dead_letters("default") == []
    assert (await broker.stats("default")).reserved == 0


class _CorruptRecords(MemoryStorage):
    """A storage holding one record nobody can read, as after a manual edit."""

    def __init__(self, corrupt_id: str) -> None:
        super().__init__()
        self.corrupt_id = corrupt_id

    async def get(self, task_id: str) -> Task | None:
        if task_id == self.corrupt_id and (await super().get(task_id)) is None:
            raise CorruptRecordError(f"corrupt record {task_id}: unknown status 'bogus'")
        return await super().get(task_id)


async def test_a_defect_over_an_unreadable_record_leaves_a_dead_placeholder(
    broker: MemoryBroker, registry: TaskRegistry, settings: Settings
) -> None:
    task = Task.new("work")
    storage = _CorruptRecords(task.id)
    await broker.push(task)
    got = await broker.reserve(Q, lease=5.0, limit=1, timeout=2.0)
    got[0].defect = f"corrupt record {task.id}: unknown status 'bogus'"
    await Executor(broker, storage, registry, settings).execute(got[0])
    letters = await broker.dead_letters("default")
    assert [d.reason for d in letters] == [got[0].defect]
    stored = await storage.get(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.DEAD
    assert stored.error == got[0].defect
    assert stored.name == "bgcoor.corrupt"
