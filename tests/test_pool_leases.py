"""WorkerPool heartbeats: the leases of running tasks are extended."""

from __future__ import annotations

import time
from collections.abc import Callable

from pool_support import pool_for

from bgcoor_core import (
    Capability,
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
)


async def test_cpu_bound_sync_task_keeps_its_lease(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    lease = 0.3
    calls = 0

    def busy() -> int:
        nonlocal calls
        calls += 1
        spins = 0
        end = time.monotonic() + 3 * lease
        while time.monotonic() < end:  # pure Python: holds the GIL as much as it can
            spins += 1
        return spins

    registry.register("busy", busy)
    task = Task.new("busy")
    await broker.push(task)
    async with pool_for(broker, storage, registry, fast_settings(lease_seconds=lease), 2):
        done = await storage.wait(task.id, timeout=10)
    assert done.status is TaskStatus.SUCCEEDED
    assert calls == 1
    assert done.attempts == 1
    assert (await broker.stats("default")).reserved == 0


async def test_without_heartbeats_the_same_task_would_be_redelivered(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    """Control for the heartbeat test: the lease really is short enough to expire."""

    class NoExtend(MemoryBroker):
        capabilities = frozenset(Capability) - {Capability.LEASE_EXTENSION}

    broker = NoExtend(broker.codec)
    calls = 0

    def busy() -> None:
        nonlocal calls
        calls += 1
        end = time.monotonic() + 5
        while time.monotonic() < end and calls < 2:  # spin until the lease is lost
            pass

    registry.register("busy", busy)
    task = Task.new("busy")
    await broker.push(task)
    async with pool_for(broker, storage, registry, fast_settings(lease_seconds=0.3), 2):
        await storage.wait(task.id, timeout=10)
    assert calls >= 2
