"""WorkerPool: the original design, concurrency, prefetch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pool_support import all_succeeded, pool_for, statuses

from bgcoor_core import (
    Codec,
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    WorkerPool,
)

# -- the original design -----------------------------------------------------------------


async def test_the_original_design_example(codec: Codec) -> None:
    """MemoryBroker, MemoryStorage, TaskRegistry, WorkerPool(..., 4), Task.new, push."""

    class MyTask:
        async def run(self, payload: Any) -> Any:
            return {"greeting": f"hello, {payload['name']}"}

    broker = MemoryBroker(codec)
    storage = MemoryStorage(codec)
    registry = TaskRegistry()
    registry.register("my_task", MyTask())
    pool = WorkerPool(broker, storage, registry, 4)
    await pool.start()
    task = Task.new("my_task", {"name": "world"}, 3)
    await broker.push(task)
    done = await storage.wait(task.id, timeout=5)
    await pool.shutdown()

    assert done.status is TaskStatus.SUCCEEDED
    assert done.result == {"greeting": "hello, world"}
    assert done.attempts == 1
    assert pool.concurrency == 4
    assert (await broker.stats("default")).reserved == 0


# -- concurrency -----------------------------------------------------------------------


async def test_async_handlers_run_concurrently(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    n = 10
    barrier = asyncio.Barrier(n)  # passes only when all n run at the same time

    async def meet() -> None:
        async with asyncio.timeout(5):
            await barrier.wait()
        await asyncio.sleep(0.2)

    registry.register("meet", meet)
    tasks = [Task.new("meet") for _ in range(n)]
    async with pool_for(broker, storage, registry, settings, n):
        started = time.monotonic()
        await broker.push_many(tasks)
        for task in tasks:
            await storage.wait(task.id, timeout=10)
        elapsed = time.monotonic() - started
    assert await all_succeeded(storage, tasks)
    assert elapsed < 1.0  # ten 0.2 s sleeps took about one sleep's time


async def test_sync_handlers_run_in_threads_at_the_same_time(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    barrier = threading.Barrier(4, timeout=5)
    threads: set[str] = set()

    def meet() -> None:
        threads.add(threading.current_thread().name)
        barrier.wait()

    registry.register("meet", meet)
    tasks = [Task.new("meet") for _ in range(4)]
    async with pool_for(broker, storage, registry, settings, 4):
        await broker.push_many(tasks)
        for task in tasks:
            await storage.wait(task.id, timeout=10)
    assert await all_succeeded(storage, tasks)
    assert len(threads) == 4
    assert threading.current_thread().name not in threads


async def test_blocking_sync_handlers_do_not_block_the_event_loop(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    release = threading.Event()
    both_blocked = threading.Barrier(3, timeout=5)  # two handlers and this test
    ticks = 0

    def block() -> None:
        both_blocked.wait()
        release.wait(10)
        time.sleep(0.01)

    async def tick() -> int:
        nonlocal ticks
        for _ in range(20):
            ticks += 1
            await asyncio.sleep(0.001)
        return ticks

    registry.register("block", block)
    registry.register("tick", tick)
    blockers = [Task.new("block"), Task.new("block")]
    ticker = Task.new("tick")
    try:
        async with pool_for(broker, storage, registry, settings, 4):
            await broker.push_many(blockers)
            await asyncio.to_thread(both_blocked.wait)
            await broker.push(ticker)
            done = await storage.wait(ticker.id, timeout=5)  # while both still block
            assert done.status is TaskStatus.SUCCEEDED
            assert done.result == 20
            assert not release.is_set()
            assert await statuses(storage, blockers) == Counter({TaskStatus.RUNNING: 2})
            release.set()
            for task in blockers:
                await storage.wait(task.id, timeout=5)
    finally:
        release.set()
    assert await all_succeeded(storage, blockers)


# -- prefetch --------------------------------------------------------------------------


async def test_prefetch_is_bounded_however_long_the_queue(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    concurrency, prefetch = 4, 2
    done = 0

    async def tiny() -> None:
        nonlocal done
        await asyncio.sleep(0)
        done += 1

    registry.register("tiny", tiny)
    tasks = [Task.new("tiny") for _ in range(1000)]
    await broker.push_many(tasks)
    pool = pool_for(broker, storage, registry, fast_settings(prefetch=prefetch), concurrency)
    most_reserved = most_held = 0
    async with pool:
        deadline = time.monotonic() + 30
        while done < len(tasks):
            stats = await broker.stats("default")
            most_reserved = max(most_reserved, stats.reserved)
            most_held = max(most_held, pool.running)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
    assert most_reserved <= concurrency + prefetch
    assert most_held <= concurrency + prefetch
    assert most_reserved >= concurrency  # the pool does fill its slots
    assert await all_succeeded(storage, tasks)
    assert pool.processed == len(tasks)
