"""WorkerPool capabilities and assembly: options the broker cannot honour, from_settings,
many pools on one broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from pool_support import all_succeeded, pool_for

from bgcoor_core import (
    BrokerRegistry,
    Capability,
    CapabilityError,
    Codec,
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskOptions,
    TaskRegistry,
    WorkerPool,
    build_plugin_host,
    hookimpl,
)


class NoPriorities(MemoryBroker):
    capabilities = frozenset(Capability) - {Capability.PRIORITIES}


async def test_a_priority_the_broker_cannot_honour_fails_at_start(
    codec: Codec, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    broker = NoPriorities(codec)
    registry.register("urgent", lambda: None, TaskOptions(priority=5))
    pool = pool_for(broker, storage, registry, settings, 2)
    with pytest.raises(CapabilityError, match="'urgent' has a priority"):
        await pool.start()
    with pytest.raises(CapabilityError, match="does not support priorities"):
        await broker.push(Task.new("urgent", priority=5))


async def test_tasks_without_priorities_start_fine_on_such_a_broker(
    codec: Codec, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    broker = NoPriorities(codec)
    registry.register("plain", lambda: "ok")
    task = Task.new("plain")
    async with pool_for(broker, storage, registry, settings, 2):
        await broker.push(task)
        assert (await storage.wait(task.id, timeout=5)).result == "ok"


async def test_from_settings_assembles_everything_through_the_hooks(
    fast_settings: Callable[..., Settings],
) -> None:
    def shout(word: str) -> str:
        return word.upper()

    class Tasks:
        @hookimpl
        def bgcoor_register_tasks(self, tasks: TaskRegistry) -> None:
            tasks.register("shout", shout)

    made: list[str] = []

    class Brokers:
        @hookimpl
        def bgcoor_register_brokers(self, brokers: BrokerRegistry) -> None:
            def factory(url: str, context: Any) -> MemoryBroker:
                made.append(url)
                return MemoryBroker(context.codec)

            brokers.add("tracked", factory)

    settings = fast_settings(broker_url="tracked://x", concurrency=3, queues="jobs,other")
    host = build_plugin_host(plugins=[Tasks(), Brokers()])
    pool = WorkerPool.from_settings(settings, host=host)
    assert made == ["tracked://x"]
    assert isinstance(pool.broker, MemoryBroker)
    assert isinstance(pool.storage, MemoryStorage)
    assert pool.concurrency == 3
    assert pool.queues == ["jobs", "other"]
    assert "shout" in pool.registry
    task = Task.new("shout", {"args": ["hi"]}, queue="other")
    async with pool:
        await pool.broker.push(task)
        assert (await pool.storage.wait(task.id, timeout=5)).result == "HI"


async def test_from_settings_assembles_backends_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "2")
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://")
    pool = WorkerPool.from_settings()
    assert pool.concurrency == 2
    assert isinstance(pool.broker, MemoryBroker)
    assert isinstance(pool.storage, MemoryStorage)


async def test_many_pools_on_one_broker_run_each_task_once(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    runs: Counter[int] = Counter()
    by_pool: Counter[int] = Counter()

    async def work(n: int) -> int:
        runs[n] += 1
        await asyncio.sleep(0)
        return n

    registry.register("work", work)
    tasks = [Task.new("work", {"args": [i]}) for i in range(600)]
    settings = fast_settings(prefetch=4, lease_seconds=10.0)
    pools = [pool_for(broker, storage, registry, settings, 4) for _ in range(5)]
    for pool in pools:
        await pool.start()
    try:
        await broker.push_many(tasks)
        for task in tasks:
            await storage.wait(task.id, timeout=20)
    finally:
        for pool in pools:
            await pool.shutdown()
    for i, pool in enumerate(pools):
        by_pool[i] = pool.processed
    assert runs == Counter({i: 1 for i in range(600)})
    assert await all_succeeded(storage, tasks)
    assert sum(by_pool.values()) == 600
    assert sum(1 for n in by_pool.values() if n > 0) >= 2  # the work was shared
