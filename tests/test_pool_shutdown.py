"""WorkerPool shutdown: buffered tasks are handed back; running ones finish, or are handed
back once the grace is over; nothing is lost across restarts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pool_support import WaitUntil, all_succeeded, pool_for, statuses_of_started

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
)


async def test_shutdown_hands_back_buffered_tasks_and_lets_running_ones_finish(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    release = asyncio.Event()
    started: list[str] = []

    class Gate:
        async def run(self, payload: Any) -> Any:
            started.append(payload)
            await release.wait()
            return payload

    registry.register("gate", Gate())
    tasks = [Task.new("gate", i) for i in range(10)]
    await broker.push_many(tasks)
    settings = fast_settings(prefetch=3, lease_seconds=30.0, shutdown_grace=10.0)
    pool = pool_for(broker, storage, registry, settings, 2)
    await pool.start()
    await wait_until(lambda: len(started) == 2 and pool.running == 5, what="pool full")
    assert (await broker.stats("default")).reserved == 5

    stopping = asyncio.create_task(pool.shutdown())

    async def handed_back() -> bool:
        stats = await broker.stats("default")
        return (stats.ready, stats.reserved) == (8, 2)

    await wait_until(handed_back, timeout=2.0, what="buffered tasks handed back")
    assert not stopping.done()  # still waiting for the two running tasks
    release.set()
    await asyncio.wait_for(stopping, 5)

    counts = await statuses_of_started(storage, tasks)
    assert counts == Counter({TaskStatus.SUCCEEDED: 2, TaskStatus.PENDING: 8})
    assert len(started) == 2
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (8, 0)
    again = await broker.reserve(["default"], lease=5, limit=100)
    assert len(again) == 8
    assert all(r.lost == 0 for r in again)  # handed back, not counted as lost


async def test_tasks_running_past_the_grace_are_cancelled_and_handed_back(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    started = 0
    cancelled = 0

    async def forever() -> None:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    registry.register("forever", forever)
    tasks = [Task.new("forever") for _ in range(3)]
    await broker.push_many(tasks)
    pool = pool_for(broker, storage, registry, fast_settings(lease_seconds=30.0), 3)
    await pool.start()
    await wait_until(lambda: started == 3, what="all three running")

    begun = time.monotonic()
    await pool.shutdown(grace=0.1)
    assert time.monotonic() - begun < 2.0
    assert cancelled == 3
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (3, 0)  # reservable now, not after 30 s
    again = await broker.reserve(["default"], lease=5, limit=10)
    assert sorted(r.task.id for r in again) == sorted(t.id for t in tasks)


async def test_nothing_is_lost_across_shutdown_and_restart(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    completed: Counter[str] = Counter()

    class Work:
        async def run(self, payload: Any) -> Any:
            await asyncio.sleep(0.002 * (payload % 5))
            completed[payload] += 1  # reached only by attempts that were not cancelled
            return payload

    registry.register("work", Work())
    tasks = [Task.new("work", i) for i in range(300)]
    await broker.push_many(tasks)
    settings = fast_settings(prefetch=5, lease_seconds=30.0)

    for round_ in range(3):
        pool = pool_for(broker, storage, registry, settings, 8)
        await pool.start()
        await wait_until(lambda p=pool: p.processed >= 30, what=f"round {round_} progress")
        await pool.shutdown(grace=0.0 if round_ % 2 else 1.0)

    pool = pool_for(broker, storage, registry, settings, 8)
    async with pool:
        for task in tasks:
            await storage.wait(task.id, timeout=10)

    assert await all_succeeded(storage, tasks)
    assert completed == Counter({i: 1 for i in range(300)})
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.reserved, stats.dead) == (0, 0, 0, 0)
