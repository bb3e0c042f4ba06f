"""A task whose earlier worker was lost runs alone, so a poison task cannot take innocent
tasks down with it (and use up their ``max_worker_lost``). Found by the reliability
suite's poison scenario; pinned here on the memory backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Reservation,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    WorkerPool,
)
from bgcoor_core._quarantine import Quarantine

Interval = tuple[str, float, float]
WaitUntil = Callable[..., Awaitable[None]]  # the wait_until fixture


def timed(
    name: str, log: list[Interval], seconds: float, started: list[str] | None = None
) -> Callable[[], object]:
    async def run() -> None:
        start = time.monotonic()
        if started is not None:
            started.append(name)
        await asyncio.sleep(seconds)
        log.append((name, start, time.monotonic()))

    return run


async def lose_once(broker: MemoryBroker, task: Task) -> None:
    """Reserve ``task`` and never settle it: its worker died."""
    await broker.push(task)
    [reservation] = await broker.reserve(["default"], lease=0.05, timeout=1)
    assert reservation.task.id == task.id


async def lose_once_more(broker: MemoryBroker, task: Task) -> None:
    """Let the lease lapse and lose ``task`` with a second dead worker."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        held = await broker.reserve(["default"], lease=0.05, timeout=0.1)
        if held:
            assert [r.task.id for r in held] == [task.id]
            assert held[0].lost == 1
            return
    raise AssertionError("the lost task was not delivered again")


async def test_tasks_lost_with_one_crash_run_side_by_side(
    fast_settings: Callable[..., Settings], wait_until: WaitUntil
) -> None:
    """One worker death proves nothing: what it held comes back and runs concurrently."""
    broker, storage, registry = MemoryBroker(), MemoryStorage(), TaskRegistry()
    log: list[Interval] = []
    registry.register("normal", timed("normal", log, 0.2))
    tasks = [Task.new("normal") for _ in range(4)]
    await broker.push_many(tasks)
    lost = await broker.reserve(["default"], lease=0.05, limit=4, timeout=1)
    assert len(lost) == 4  # held by a worker that dies now

    async def lease_expired() -> bool:
        return (await broker.stats("default")).reserved == 0

    await wait_until(lease_expired, timeout=5)
    async with WorkerPool(broker, storage, registry, 4, settings=fast_settings()):
        for task in tasks:
            assert (await storage.wait(task.id, timeout=5)).status is TaskStatus.SUCCEEDED
    first_end = min(end for _, _, end in log)
    assert all(start < first_end for _, start, _ in log), "they ran one after another"


async def test_a_task_whose_worker_was_lost_runs_alone(
    fast_settings: Callable[..., Settings], wait_until: WaitUntil
) -> None:
    broker, storage, registry = MemoryBroker(), MemoryStorage(), TaskRegistry()
    log: list[Interval] = []
    registry.register("suspect", timed("suspect", log, 0.2))
    registry.register("normal", timed("normal", log, 0.1))
    suspect = Task.new("suspect")
    await lose_once(broker, suspect)
    await lose_once_more(broker, suspect)
    normal = [Task.new("normal") for _ in range(6)]
    await broker.push_many(normal)

    async def lease_expired() -> bool:  # the suspect is ready again, ahead of the others
        return (await broker.stats("default")).reserved == 0

    await wait_until(lease_expired, timeout=5)
    pool = WorkerPool(broker, storage, registry, 4, settings=fast_settings())
    async with pool:
        for task in [suspect, *normal]:
            done = await storage.wait(task.id, timeout=5)
            assert done.status is TaskStatus.SUCCEEDED
    [(_, start, end)] = [entry for entry in log if entry[0] == "suspect"]
    beside = [
        entry for entry in log if entry[0] == "normal" and entry[1] < end and entry[2] > start
    ]
    assert beside == [], "tasks ran beside the suspect"
    assert len(log) == 7
    assert (await broker.stats("default")).reserved == 0


async def test_shutdown_while_a_suspect_waits_hands_it_back(
    fast_settings: Callable[..., Settings], wait_until: WaitUntil
) -> None:
    broker, storage, registry = MemoryBroker(), MemoryStorage(), TaskRegistry()
    log: list[Interval] = []
    registry.register("suspect", timed("suspect", log, 0.0))
    log_started: list[str] = []
    registry.register("long", timed("long", log, 5.0, log_started))
    long = Task.new("long")
    await broker.push(long)
    # with max_worker_lost=1 a single loss already makes a suspect
    settings = fast_settings(shutdown_grace=0, max_worker_lost=1)
    pool = WorkerPool(broker, storage, registry, 2, settings=settings)
    await pool.start()
    await wait_until(lambda: bool(log_started), timeout=5)  # the long task is running
    suspect = Task.new("suspect")
    await lose_once(broker, suspect)  # reserved by a worker that died at once
    await wait_until(lambda: pool.running == 2, timeout=5)  # holds the suspect, waiting
    await pool.shutdown()
    stats = await broker.stats("default")
    assert (stats.ready, stats.reserved) == (2, 0)  # both handed back, none left leased
    assert log == []


# -- the rule itself ---------------------------------------------------------------------


def held(task: Task, lost: int, token: str) -> Reservation:
    return Reservation(task=task, token=token, deliveries=lost + 1, lost=lost)


def test_the_quarantine_threshold_is_two_deaths_or_max_worker_lost_if_lower() -> None:
    assert [Quarantine(n).threshold for n in (0, 1, 2, 3, 10)] == [1, 1, 2, 2, 2]


def test_a_suspect_is_lost_often_enough_and_not_still_running_here() -> None:
    rule = Quarantine(max_worker_lost=3)
    task, other = Task.new("t"), Task.new("u")
    fresh, once, twice = held(other, 0, "a"), held(other, 1, "b"), held(task, 2, "c")
    assert rule.suspect_in([fresh, once], lambda: [fresh, once]) is None
    assert rule.suspect_in([fresh, twice], lambda: [fresh, twice]) is twice
    # The same task still running in this pool: its lease lapsed here, no worker died.
    earlier = held(task, 1, "d")
    assert rule.suspect_in([twice], lambda: [earlier, twice]) is None


def test_the_held_tasks_are_only_listed_when_a_batch_has_a_candidate() -> None:
    calls: list[int] = []

    def listing() -> list[Reservation]:
        calls.append(1)
        return []

    batch = [held(Task.new("t"), 1, "a"), held(Task.new("t"), 0, "b")]
    assert Quarantine(max_worker_lost=5).suspect_in(batch, listing) is None
    assert calls == []  # the common batch costs no scan of everything held
