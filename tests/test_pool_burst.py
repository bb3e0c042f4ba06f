"""WorkerPool.run(burst=True): run until the queues are empty and nothing runs, then stop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from pool_support import all_succeeded, pool_for

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
)


async def test_a_burst_returns_once_the_queue_is_drained(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    async def work(n: int) -> int:
        await asyncio.sleep(0.001 * (n % 3))
        return n

    registry.register("work", work)
    tasks = [Task.new("work", {"args": [i]}) for i in range(50)]
    await broker.push_many(tasks)
    pool = pool_for(broker, storage, registry, settings, 4)
    began = time.monotonic()
    await asyncio.wait_for(pool.run(burst=True), 10)
    assert time.monotonic() - began < 3.0
    assert await all_succeeded(storage, tasks)
    assert pool.processed == 50
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (0, 0)


async def test_a_burst_on_empty_queues_returns_at_once(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    pool = pool_for(broker, storage, registry, settings, 2)
    began = time.monotonic()
    await asyncio.wait_for(pool.run(burst=True), 5)
    assert time.monotonic() - began < settings.poll_seconds + 0.5
    assert pool.processed == 0


async def test_a_burst_does_not_stop_while_a_task_runs(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "finished"

    registry.register("slow", slow)
    task = Task.new("slow")
    await broker.push(task)
    serving = asyncio.create_task(pool_for(broker, storage, registry, settings, 2).run(burst=True))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.3)  # the queue is empty, but the task still runs
    assert not serving.done()
    release.set()
    await asyncio.wait_for(serving, 5)
    done = await storage.get(task.id)
    assert done is not None
    assert done.status is TaskStatus.SUCCEEDED
    assert done.result == "finished"


async def test_a_burst_runs_tasks_its_tasks_enqueue(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    """A follow-up pushed by the last running task is not left behind."""
    ran: list[int] = []

    async def chain(n: int) -> int:
        ran.append(n)
        await asyncio.sleep(0.01)
        if n < 4:
            await broker.push(Task.new("chain", {"args": [n + 1]}))
        return n

    registry.register("chain", chain)
    await broker.push(Task.new("chain", {"args": [0]}))
    await asyncio.wait_for(pool_for(broker, storage, registry, settings, 2).run(burst=True), 10)
    assert ran == [0, 1, 2, 3, 4]


async def test_tasks_scheduled_for_later_do_not_keep_a_burst_alive(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    registry.register("job", lambda: "ok")
    now = Task.new("job")
    later = Task.new("job", eta=datetime.now(UTC) + timedelta(hours=1))
    await broker.push_many([now, later])
    began = time.monotonic()
    await asyncio.wait_for(pool_for(broker, storage, registry, settings, 2).run(burst=True), 5)
    assert time.monotonic() - began < 2.0
    assert (await storage.wait(now.id, timeout=1)).status is TaskStatus.SUCCEEDED
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.reserved) == (0, 1, 0)  # left for later
