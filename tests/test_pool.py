"""WorkerPool: concurrency, prefetch, heartbeats, shutdown, capabilities, many pools."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bgcoor_core import (
    BrokerRegistry,
    Capability,
    CapabilityError,
    Codec,
    ConfigurationError,
    MemoryBroker,
    MemoryStorage,
    Settings,
    Task,
    TaskOptions,
    TaskRegistry,
    TaskStatus,
    WorkerPool,
    build_plugin_host,
    hookimpl,
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


# -- heartbeats ------------------------------------------------------------------------


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


# -- shutdown --------------------------------------------------------------------------


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


async def statuses_of_started(storage: MemoryStorage, tasks: list[Task]) -> Counter[TaskStatus]:
    """Status per task; tasks never marked running have no record and count as pending."""
    found: Counter[TaskStatus] = Counter()
    for task in tasks:
        record = await storage.get(task.id)
        found[record.status if record else TaskStatus.PENDING] += 1
    return found


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


# -- capabilities and assembly ---------------------------------------------------------


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


# -- signals and failures inside the pool ----------------------------------------------


async def test_sigterm_shuts_down_gracefully(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def work(n: int) -> int:
        started.set()
        await release.wait()
        return n

    registry.register("work", work)
    tasks = [Task.new("work", {"args": [i]}) for i in range(5)]
    await broker.push_many(tasks)
    settings = fast_settings(prefetch=4, lease_seconds=30.0, shutdown_grace=10.0)
    pool = pool_for(broker, storage, registry, settings, 1)
    serving = asyncio.create_task(pool.run())
    await started.wait()  # run() installs its signal handlers before it starts the pool

    os.kill(os.getpid(), signal.SIGTERM)

    async def buffered_handed_back() -> bool:
        stats = await broker.stats("default")
        return (stats.ready, stats.reserved) == (4, 1)

    await wait_until(buffered_handed_back, timeout=2.0, what="buffer handed back on SIGTERM")
    assert not serving.done()  # the running task may finish
    release.set()
    await asyncio.wait_for(serving, 5)
    assert (await statuses_of_started(storage, tasks))[TaskStatus.SUCCEEDED] == 1
    assert (await broker.stats("default")).ready == 4


async def test_a_second_signal_hands_back_running_tasks_at_once(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
    wait_until: WaitUntil,
) -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await asyncio.sleep(3600)

    registry.register("stuck", stuck)
    task = Task.new("stuck")
    await broker.push(task)
    settings = fast_settings(lease_seconds=30.0, shutdown_grace=30.0)
    pool = pool_for(broker, storage, registry, settings, 2)
    serving = asyncio.create_task(pool.run())
    await started.wait()
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.05)
    assert not serving.done()  # the first signal waits for the running task
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(serving, 5)
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (1, 0)


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
