"""WorkerPool.cancel: one task stops, the others run on; timeouts stay per task; each task
runs in its own context."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable

from pool_support import WaitUntil, pool_for

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    current_task,
)


async def test_cancelling_one_running_task_leaves_the_others_running(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    wait_until: WaitUntil,
) -> None:
    release = asyncio.Event()
    started: list[int] = []
    interrupted: list[int] = []

    async def work(n: int) -> int:
        started.append(n)
        try:
            await release.wait()
        except asyncio.CancelledError:
            interrupted.append(n)
            raise
        return n

    registry.register("work", work)
    tasks = [Task.new("work", {"args": [i]}) for i in range(3)]
    await broker.push_many(tasks)
    async with pool_for(broker, storage, registry, settings, 3) as pool:
        await wait_until(lambda: len(started) == 3, what="all three running")
        assert pool.cancel(tasks[1].id) is True
        cancelled = await storage.wait(tasks[1].id, timeout=5)
        assert cancelled.status is TaskStatus.CANCELLED
        assert cancelled.error == "cancelled while running"
        assert interrupted == [1]
        for other in (tasks[0], tasks[2]):  # untouched: still running
            record = await storage.get(other.id)
            assert record is not None
            assert record.status is TaskStatus.RUNNING
        extra = Task.new("work", {"args": [3]})  # the freed slot takes new work
        await broker.push(extra)
        await wait_until(lambda: 3 in started, what="a new task in the freed slot")
        release.set()
        for task in (tasks[0], tasks[2], extra):
            assert (await storage.wait(task.id, timeout=5)).status is TaskStatus.SUCCEEDED
    assert interrupted == [1]
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 0)  # acked, not handed back


async def test_a_sync_task_sees_cancel_requested(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
) -> None:
    running = threading.Event()
    saw_cancel = threading.Event()

    def poll() -> None:
        running.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if current_task().cancel_requested:
                saw_cancel.set()
                return
            time.sleep(0.005)

    registry.register("poll", poll)
    task = Task.new("poll")
    async with pool_for(broker, storage, registry, settings, 2) as pool:
        await broker.push(task)
        assert await asyncio.to_thread(running.wait, 5)
        assert pool.cancel(task.id) is True
        done = await storage.wait(task.id, timeout=5)
        assert done.status is TaskStatus.CANCELLED
        assert await asyncio.to_thread(saw_cancel.wait, 5)
    assert (await broker.stats("default")).reserved == 0


async def test_cancel_of_a_task_the_pool_does_not_hold_returns_false(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
) -> None:
    registry.register("quick", lambda: "done")
    task = Task.new("quick")
    async with pool_for(broker, storage, registry, settings, 2) as pool:
        assert pool.cancel("no-such-task") is False
        await broker.push(task)
        assert (await storage.wait(task.id, timeout=5)).status is TaskStatus.SUCCEEDED
        assert pool.cancel(task.id) is False  # settled: no longer held
    assert (await storage.get(task.id)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]


async def test_a_task_cancelled_while_waiting_for_a_slot_never_runs(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def block(name: str) -> str:
        ran.append(name)
        await release.wait()
        return name

    registry.register("block", block)
    first, waiting = Task.new("block", {"args": ["first"]}), Task.new("block", {"args": ["w"]})
    await broker.push_many([first, waiting])
    pool = pool_for(broker, storage, registry, fast_settings(prefetch=1), 1)
    async with pool:
        await wait_until(lambda: ran == ["first"] and pool.running == 2, what="one waits")
        assert pool.cancel(waiting.id) is True
        done = await storage.wait(waiting.id, timeout=5)
        assert done.status is TaskStatus.CANCELLED
        assert done.error == "cancelled before it started"
        record = await storage.get(first.id)
        assert record is not None
        assert record.status is TaskStatus.RUNNING  # the running one is untouched
        release.set()
        assert (await storage.wait(first.id, timeout=5)).status is TaskStatus.SUCCEEDED
    assert ran == ["first"]
    assert (await broker.stats("default")).reserved == 0


async def test_a_cancel_after_the_handler_returned_keeps_the_outcome(
    broker: MemoryBroker,
    registry: TaskRegistry,
    settings: Settings,
    wait_until: WaitUntil,
) -> None:
    """Cancelling the asyncio task while it stores the outcome would leave the message
    reserved and unacknowledged: the pool only interrupts a handler."""
    saving = asyncio.Event()
    unblock = asyncio.Event()

    class SlowOutcome(MemoryStorage):
        async def save(self, task: Task, *, ttl: float | None = None) -> None:
            if task.status is TaskStatus.SUCCEEDED:
                saving.set()
                await unblock.wait()
            await super().save(task, ttl=ttl)

    storage = SlowOutcome(broker.codec)
    registry.register("quick", lambda: "done")
    task = Task.new("quick")
    async with pool_for(broker, storage, registry, settings, 2) as pool:
        await broker.push(task)
        await saving.wait()
        assert pool.cancel(task.id) is True  # held until settled
        unblock.set()
        done = await storage.wait(task.id, timeout=5)
        assert done.status is TaskStatus.SUCCEEDED
        await wait_until(lambda: pool.running == 0, what="settled")
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (0, 0)


async def test_timeouts_stay_per_task(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
) -> None:
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    registry.register("nap", nap)
    slow = Task.new("nap", {"args": [5.0]}, 0, timeout=0.2)
    steady = Task.new("nap", {"args": [0.5]}, 0)
    async with pool_for(broker, storage, registry, settings, 2):
        await broker.push_many([slow, steady])
        timed_out = await storage.wait(slow.id, timeout=5)
        assert timed_out.status in (TaskStatus.FAILED, TaskStatus.DEAD)
        assert "exceeded its timeout of 0.2s" in (timed_out.error or "")
        record = await storage.get(steady.id)
        assert record is not None
        assert record.status is TaskStatus.RUNNING  # its neighbour's timeout left it alone
        assert (await storage.wait(steady.id, timeout=5)).result == 0.5


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_each_task_runs_in_its_own_context(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
) -> None:
    """A contextvar one task sets is not what the next one finds (a long-lived slot loop
    used to share its context with every task it ran)."""

    async def mark(value: str) -> str:
        before = _SEEN.get()
        _SEEN.set(value)
        return before

    registry.register("mark", mark)
    tasks = [Task.new("mark", {"args": [f"v{i}"]}) for i in range(5)]
    async with pool_for(broker, storage, registry, settings, 1):
        for task in tasks:  # one after another, through the single slot
            await broker.push(task)
            await storage.wait(task.id, timeout=5)
    results = [(await storage.wait(t.id, timeout=1)).result for t in tasks]
    assert results == ["unset"] * 5
