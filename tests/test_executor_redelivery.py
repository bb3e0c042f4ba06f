"""Executor: lost workers, zombies, redeliveries, and handler objects."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from executor_support import (
    Counter,
    Q,
    assert_broker_empty,
    executor_for,
    raise_,
    record,
    reserve_one,
    run_to_end,
)

from bgcoor_core import (
    Executor,
    MemoryBroker,
    MemoryStorage,
    Settings,
    StaleLeaseError,
    Task,
    TaskRegistry,
    TaskStatus,
    WorkerLostError,
    hookimpl,
)
from bgcoor_core._executor import KILLED_HEADER
from bgcoor_core._isolation import ChildKilledError

# -- lost workers, zombies, redeliveries -----------------------------------------------


async def lose(broker: MemoryBroker, times: int) -> None:
    """Reserve ``times`` times and never settle: a worker that dies under the task."""
    for _ in range(times):
        got = await broker.reserve(Q, lease=0.05, limit=1, timeout=2.0)
        assert len(got) == 1


async def test_a_task_that_kills_its_workers_is_dead_lettered_as_worker_lost(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    counter = Counter()
    registry.register("poison", counter)
    task = Task.new("poison", None, 10)
    await broker.push(task)
    await lose(broker, 3)
    reservation = await reserve_one(broker, wait=2.0)
    assert reservation.lost == 3
    await executor_for(broker, storage, registry, fast_settings(max_worker_lost=2)).execute(
        reservation
    )
    assert counter.calls == 0
    letters = await broker.dead_letters("default")
    assert letters[0].reason.startswith("worker_lost")
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert stored.error is not None
    assert stored.error.startswith("worker_lost")
    await assert_broker_empty(broker, dead=1)


async def test_up_to_max_worker_lost_the_task_still_runs(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    counter = Counter()
    registry.register("survivor", counter)
    task = Task.new("survivor")
    await broker.push(task)
    await lose(broker, 2)
    reservation = await reserve_one(broker, wait=2.0)
    assert reservation.lost == 2
    await executor_for(broker, storage, registry, fast_settings(max_worker_lost=2)).execute(
        reservation
    )
    assert counter.calls == 1
    assert (await record(storage, task)).status is TaskStatus.SUCCEEDED


# -- children killed by a signal (isolation="process") -----------------------------------


def killed(signal_: signal.Signals = signal.SIGSEGV) -> ChildKilledError:
    """What the child pool raises when a task's child process dies of ``signal_``."""
    return ChildKilledError(f"task 'k': child process 4242 killed by {signal_.name}", signal_)


#: ``await queued_k(outcome, retries=r, max_worker_lost=m)``: task ``k``, whose n-th run
#: ends as ``outcome(n)`` does, stored and queued with ``r`` retries; its counter, and an
#: executor with that ``max_worker_lost``.
QueuedK = Callable[..., Awaitable[tuple[Task, Counter, Executor]]]


@pytest.fixture
def queued_k(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> QueuedK:
    async def queue(
        outcome: Callable[[int], Any], *, retries: int, max_worker_lost: int
    ) -> tuple[Task, Counter, Executor]:
        counter = Counter(outcome)
        registry.register("k", counter)
        task = Task.new("k", None, retries)
        await storage.save(task)
        await broker.push(task)
        settings = fast_settings(max_worker_lost=max_worker_lost)
        return task, counter, executor_for(broker, storage, registry, settings)

    return queue


async def test_a_killed_child_uses_no_retry_attempt_and_counts_toward_worker_lost(
    broker: MemoryBroker, storage: MemoryStorage, queued_k: QueuedK
) -> None:
    # no retries at all
    task, counter, executor = await queued_k(raise_(killed()), retries=0, max_worker_lost=2)
    await executor.execute(await reserve_one(broker))
    first = await record(storage, task)
    assert (first.status, first.attempts) == (TaskStatus.RETRYING, 1)
    assert first.headers[KILLED_HEADER] == "1"
    assert first.error == "WorkerLostError: task 'k': child process 4242 killed by SIGSEGV"
    again = await reserve_one(broker)
    assert again.task.headers[KILLED_HEADER] == "1"  # the count travels with the message
    await executor.execute(again)
    assert await run_to_end(broker, executor) == 1
    assert counter.calls == 3  # max_worker_lost + 1
    stored = await record(storage, task)
    assert (stored.status, stored.attempts) == (TaskStatus.DEAD, 3)
    assert stored.error == "WorkerLostError: task 'k': child process 4242 killed by SIGSEGV"
    assert KILLED_HEADER not in stored.headers  # a requeue by hand starts a fresh count
    [letter] = await broker.dead_letters("default")
    assert letter.reason == (
        "worker_lost: its process died 3 times while running it, the last killed by "
        "SIGSEGV (limit 2)"
    )
    await assert_broker_empty(broker, dead=1)


async def test_killed_children_leave_the_retries_to_real_failures(
    broker: MemoryBroker, storage: MemoryStorage, queued_k: QueuedK
) -> None:
    """Killed twice, then failing: its one retry is still there for the failure."""

    def outcome(call: int) -> Any:
        raise killed(signal.SIGKILL) if call <= 2 else ValueError(f"bad {call}")

    task, _, executor = await queued_k(outcome, retries=1, max_worker_lost=3)
    assert await run_to_end(broker, executor) == 4
    stored = await record(storage, task)
    assert (stored.status, stored.attempts, stored.error) == (
        TaskStatus.DEAD,
        4,
        "ValueError: bad 4",
    )
    [letter] = await broker.dead_letters("default")
    assert letter.reason == "max_retries exceeded (1)"


async def test_a_child_that_exits_without_answering_is_a_failure(
    broker: MemoryBroker, storage: MemoryStorage, queued_k: QueuedK
) -> None:
    """No signal (``sys.exit`` in the task, say): the task's own doing, retried as one."""
    lost = WorkerLostError("task 'k': child process 4242 exited with status 3 without answering")
    task, _, executor = await queued_k(raise_(lost), retries=1, max_worker_lost=5)
    assert await run_to_end(broker, executor) == 2
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert KILLED_HEADER not in stored.headers
    [letter] = await broker.dead_letters("default")
    assert letter.reason == "max_retries exceeded (1)"


async def test_lost_leases_and_killed_children_add_up(
    broker: MemoryBroker, storage: MemoryStorage, queued_k: QueuedK
) -> None:
    task, counter, executor = await queued_k(raise_(killed()), retries=5, max_worker_lost=2)
    await executor.execute(await reserve_one(broker))  # one killed child
    await lose(broker, 2)  # two dead workers
    last = await reserve_one(broker)
    assert (last.lost, last.task.headers[KILLED_HEADER]) == (2, "1")
    await executor.execute(last)
    assert counter.calls == 1  # dead before running again
    [letter] = await broker.dead_letters("default")
    assert letter.reason == "worker_lost: the worker died 3 times while running it (limit 2)"
    assert KILLED_HEADER not in (await record(storage, task)).headers


@pytest.mark.parametrize("zombie_outcome", ["returns", "raises"])
async def test_a_zombies_outcome_is_refused(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    zombie_outcome: str,
) -> None:
    calls = 0
    first_started = asyncio.Event()
    zombie_may_finish = asyncio.Event()
    succeeded: list[Any] = []

    class Observer:
        @hookimpl
        def bgcoor_task_succeeded(self, task: Task) -> None:
            succeeded.append(task.result)

    async def work() -> str:
        nonlocal calls
        calls += 1
        me = calls
        if me == 1:
            first_started.set()
            await zombie_may_finish.wait()
            if zombie_outcome == "raises":
                raise RuntimeError("zombie failed")
        return f"call {me}"

    registry.register("work", work)
    task = Task.new("work", None, 3)
    await broker.push(task)
    zombie = executor_for(broker, storage, registry, settings, Observer())
    healthy = executor_for(broker, storage, registry, settings, Observer())

    stale = await reserve_one(broker, lease=0.2)
    zombie_run = asyncio.create_task(zombie.execute(stale))
    await first_started.wait()
    fresh = await reserve_one(broker, lease=10.0, wait=3.0)  # the zombie's lease ran out
    assert fresh.token != stale.token
    assert fresh.lost == 1
    await healthy.execute(fresh)
    assert (await record(storage, task)).result == "call 2"

    zombie_may_finish.set()
    await zombie_run

    stored = await record(storage, task)
    assert stored.status is TaskStatus.SUCCEEDED
    assert stored.result == "call 2"
    assert stored.lease_token == fresh.token
    assert succeeded == ["call 2"]
    await assert_broker_empty(broker)
    with pytest.raises(StaleLeaseError):
        await broker.ack(stale)


async def test_a_task_already_final_when_redelivered_is_acked_without_running(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    calls = 0
    started = asyncio.Event()
    may_finish = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await may_finish.wait()
        return 7

    registry.register("work", work)
    task = Task.new("work")
    await broker.push(task)
    executor = executor_for(broker, storage, registry, settings)

    first = await reserve_one(broker, lease=0.2)
    running = asyncio.create_task(executor.execute(first))
    await started.wait()
    second = await reserve_one(broker, lease=10.0, wait=3.0)  # redelivered: lease expired
    may_finish.set()
    await running  # stores the outcome (nobody else did); its ack is refused as stale
    assert (await record(storage, task)).status is TaskStatus.SUCCEEDED
    assert (await broker.stats("default")).reserved == 1

    await executor.execute(second)
    assert calls == 1
    stored = await record(storage, task)
    assert stored.status is TaskStatus.SUCCEEDED
    assert stored.result == 7
    assert stored.attempts == 1
    await assert_broker_empty(broker)


async def test_a_cancelled_task_is_acked_without_running(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    counter = Counter()
    registry.register("work", counter)
    task = Task.new("work")
    await storage.save(task)
    await broker.push(task)
    task.status = TaskStatus.CANCELLED
    await storage.save(task)
    await run_to_end(broker, executor_for(broker, storage, registry, settings))
    assert counter.calls == 0
    assert (await record(storage, task)).status is TaskStatus.CANCELLED
    await assert_broker_empty(broker)


async def test_handler_objects_sync_and_async_receive_the_payload_as_is(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    seen: list[tuple[str, Any, str]] = []

    class SyncEcho:
        def run(self, payload: Any) -> Any:
            seen.append(("sync", payload, threading.current_thread().name))
            return payload

    class AsyncEcho:
        async def run(self, payload: Any) -> Any:
            seen.append(("async", payload, threading.current_thread().name))
            return payload

    registry.register("sync_echo", SyncEcho())
    registry.register("async_echo", AsyncEcho())
    tasks: Sequence[Task] = [
        Task.new("sync_echo", {"nested": [1, {"a": None}]}),
        Task.new("async_echo", [3, "x"]),
    ]
    await broker.push_many(tasks)
    await run_to_end(broker, executor_for(broker, storage, registry, settings))
    assert [(await record(storage, t)).result for t in tasks] == [t.payload for t in tasks]
    loop_thread = threading.current_thread().name
    sync_thread = next(thread for kind, _, thread in seen if kind == "sync")
    async_thread = next(thread for kind, _, thread in seen if kind == "async")
    assert sync_thread != loop_thread  # sync handlers never run on the event loop
    assert async_thread == loop_thread
