"""Executor: per-attempt timeouts, async and sync."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from executor_support import (
    executor_for,
    record,
    reserve_one,
)

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskOptions,
    TaskRegistry,
    TaskStatus,
)

# -- timeouts --------------------------------------------------------------------------


async def test_async_handler_past_its_timeout_is_stopped(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    finished = False

    async def slow() -> None:
        nonlocal finished
        await asyncio.sleep(30)
        finished = True

    registry.register("slow", slow)
    task = Task.new("slow", None, 0, timeout=0.05)
    await broker.push(task)
    started = time.monotonic()
    await executor_for(broker, storage, registry, settings).execute(await reserve_one(broker))
    assert time.monotonic() - started < 5
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert stored.error is not None
    assert stored.error.startswith("TaskTimeoutError:")
    assert "timeout of 0.05s" in stored.error
    assert finished is False


async def test_sync_handler_past_its_timeout_is_recorded(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    release = threading.Event()

    def blocking() -> str:
        release.wait(10)
        return "too late"

    registry.register("blocking", blocking, TaskOptions(timeout=0.05))
    task = Task.new("blocking", None, 0)
    await broker.push(task)
    try:
        started = time.monotonic()
        executor = executor_for(broker, storage, registry, settings)
        await executor.execute(await reserve_one(broker))
        assert time.monotonic() - started < 5
    finally:
        release.set()
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert stored.error is not None
    assert stored.error.startswith("TaskTimeoutError:")
    assert stored.result is None


async def test_settings_timeout_applies_when_the_task_sets_none(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    async def slow() -> None:
        await asyncio.sleep(30)

    registry.register("slow", slow)
    task = Task.new("slow", None, 0)
    await broker.push(task)
    executor = executor_for(broker, storage, registry, fast_settings(timeout=0.05))
    await executor.execute(await reserve_one(broker))
    stored = await record(storage, task)
    assert stored.error is not None
    assert "TaskTimeoutError" in stored.error


async def test_a_handlers_own_timeout_error_is_not_mistaken_for_the_task_timeout(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    async def calls_a_slow_service() -> None:
        raise TimeoutError("upstream did not answer")

    registry.register("upstream", calls_a_slow_service)
    task = Task.new("upstream", None, 0)
    await broker.push(task)
    await executor_for(broker, storage, registry, settings).execute(await reserve_one(broker))
    stored = await record(storage, task)
    assert stored.error == "TimeoutError: upstream did not answer"
