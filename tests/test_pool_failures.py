"""Failures inside the pool: reserve and settling errors, cleanup, preflight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pool_support import pool_for

from bgcoor_core import (
    Codec,
    ConfigurationError,
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    WorkerPool,
)


async def test_reserve_failures_do_not_stop_the_pool(
    codec: Codec, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    class FlakyReserve(MemoryBroker):
        failures = 2

        async def reserve(self, *args: Any, **kwargs: Any) -> list[Any]:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("broker unreachable")
            return await super().reserve(*args, **kwargs)

    broker = FlakyReserve(codec)
    registry.register("ok", lambda: "ok")
    task = Task.new("ok")
    await broker.push(task)
    async with pool_for(broker, storage, registry, settings, 2):
        done = await storage.wait(task.id, timeout=5)
    assert done.result == "ok"
    assert broker.failures == 0


async def test_a_settling_failure_does_not_kill_the_slot_and_the_task_comes_back(
    broker: MemoryBroker,
    codec: Codec,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    class FlakyStorage(MemoryStorage):
        failures = 1

        async def save(self, task: Task, *, ttl: float | None = None) -> None:
            if task.status is TaskStatus.SUCCEEDED and self.failures:
                self.failures -= 1
                raise ConnectionError("storage went away")
            await super().save(task, ttl=ttl)

    storage = FlakyStorage(codec)
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        return calls

    registry.register("work", work)
    tasks = [Task.new("work"), Task.new("work")]
    async with pool_for(broker, storage, registry, fast_settings(lease_seconds=0.3), 1):
        await broker.push_many(tasks)
        done = [await storage.wait(t.id, timeout=5) for t in tasks]
    assert [d.status for d in done] == [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]
    assert calls == 3  # one outcome was lost and redelivered after its lease
    assert (await broker.stats("default")).reserved == 0


async def test_pool_deletes_expired_records_periodically(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    expired = Task.new("gone", None, 0)
    await storage.save(expired, ttl=0.01)
    kept = Task.new("kept", None, 0)
    await storage.save(kept)
    pool = WorkerPool(broker, storage, registry, 1, settings=fast_settings(cleanup_seconds=0.05))
    await asyncio.sleep(0.02)
    async with pool:
        for _ in range(100):
            if not storage._records.get(expired.id):
                break
            await asyncio.sleep(0.01)
    assert expired.id not in storage._records  # deleted, not merely hidden
    assert await storage.get(kept.id) == kept


async def test_pool_refuses_to_start_when_the_broker_preflight_fails(
    storage: MemoryStorage, registry: TaskRegistry, fast_settings: Callable[..., Settings]
) -> None:
    class Evicting(MemoryBroker):
        async def preflight(self) -> None:
            raise ConfigurationError("server evicts keys")

    broker = Evicting()
    await broker.push(Task.new("anything"))
    pool = WorkerPool(broker, storage, registry, 1, settings=fast_settings())
    with pytest.raises(ConfigurationError, match="evicts"):
        await pool.start()
    assert (await broker.stats("default")).ready == 1  # nothing was reserved
