"""Helpers shared by the WorkerPool tests (``tests/test_pool*.py``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    WorkerPool,
)

WaitUntil = Callable[..., Awaitable[None]]  # the wait_until fixture


def pool_for(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    concurrency: int,
) -> WorkerPool:
    return WorkerPool(broker, storage, registry, concurrency, settings=settings)


async def statuses(storage: MemoryStorage, tasks: list[Task]) -> Counter[TaskStatus]:
    found: Counter[TaskStatus] = Counter()
    for task in tasks:
        record = await storage.get(task.id)
        assert record is not None, task.id
        found[record.status] += 1
    return found


async def all_succeeded(storage: MemoryStorage, tasks: list[Task]) -> bool:
    return (await statuses(storage, tasks))[TaskStatus.SUCCEEDED] == len(tasks)


async def statuses_of_started(storage: MemoryStorage, tasks: list[Task]) -> Counter[TaskStatus]:
    """Status per task; tasks never marked running have no record and count as pending."""
    found: Counter[TaskStatus] = Counter()
    for task in tasks:
        record = await storage.get(task.id)
        found[record.status if record else TaskStatus.PENDING] += 1
    return found
