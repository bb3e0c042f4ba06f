"""Helpers shared by the executor tests (``tests/test_executor*.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bgcoor_core import (
    Executor,
    MemoryBroker,
    MemoryStorage,
    Reservation,
    Settings,
    Task,
    TaskRegistry,
    build_plugin_host,
)

Q = ["default"]


def executor_for(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    *plugins: object,
) -> Executor:
    host = build_plugin_host(plugins=plugins) if plugins else None
    return Executor(broker, storage, registry, settings, host=host)


async def reserve_one(broker: MemoryBroker, lease: float = 5.0, wait: float = 2.0) -> Reservation:
    """Reserve the next task, waiting up to ``wait`` seconds (e.g. for a retry's delay)."""
    got = await broker.reserve(Q, lease=lease, limit=1, timeout=wait)
    assert len(got) == 1, "expected a task to become ready"
    return got[0]


async def run_to_end(broker: MemoryBroker, executor: Executor, *, most: int = 20) -> int:
    """Execute deliveries until the queue is empty; return how many were executed."""
    done = 0
    while (stats := await broker.stats("default")).ready or stats.scheduled:
        got = await broker.reserve(Q, lease=5.0, limit=1, timeout=2.0)
        assert got, "a waiting task did not become ready"
        await executor.execute(got[0])
        done += 1
        assert done <= most, "the task keeps coming back"
    return done


async def record(storage: MemoryStorage, task: Task) -> Task:
    stored = await storage.get(task.id)
    assert stored is not None
    return stored


async def assert_broker_empty(broker: MemoryBroker, *, dead: int = 0) -> None:
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.reserved, stats.dead) == (0, 0, 0, dead)


class Counter:
    """A sync handler object counting its calls."""

    def __init__(self, outcome: Callable[[int], Any] = lambda n: n) -> None:
        self.calls = 0
        self.outcome = outcome

    def run(self, payload: Any) -> Any:
        self.calls += 1
        return self.outcome(self.calls)


def raise_(exc: BaseException) -> Callable[[int], Any]:
    def outcome(_: int) -> Any:
        raise exc

    return outcome
