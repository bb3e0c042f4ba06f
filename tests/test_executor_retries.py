"""Executor: retries and their backoff."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from executor_support import (
    Counter,
    assert_broker_empty,
    executor_for,
    raise_,
    record,
    reserve_one,
    run_to_end,
)

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    NonRetryableError,
    Settings,
    Task,
    TaskOptions,
    TaskRegistry,
    TaskStatus,
    hookimpl,
)
from bgcoor_core._executor import backoff_delay

# -- retries ---------------------------------------------------------------------------


def test_backoff_delay_stays_within_equal_jitter_bounds() -> None:
    base, cap = 0.5, 30.0
    for attempt in range(1, 12):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        samples = [backoff_delay(attempt, base, cap) for _ in range(400)]
        assert all(ceiling / 2 <= d <= ceiling for d in samples), attempt
        # jitter is real: the samples spread over most of the allowed range
        assert max(samples) - min(samples) > 0.8 * (ceiling / 2), attempt
        assert sum(samples) / len(samples) == pytest.approx(0.75 * ceiling, rel=0.1)


def test_backoff_delay_is_capped_and_grows() -> None:
    assert all(15.0 <= backoff_delay(40, 1.0, 30.0) <= 30.0 for _ in range(200))
    assert all(0.5 <= backoff_delay(0, 1.0, 30.0) <= 1.0 for _ in range(50))
    assert backoff_delay(3, 0.0, 30.0) == 0.0
    means = [sum(backoff_delay(a, 1.0, 1e9) for _ in range(200)) / 200 for a in (1, 2, 3, 4)]
    assert means == sorted(means)
    assert means[3] > 6 * means[0]


async def test_an_exception_schedules_a_retry_with_backoff(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    fast_settings: Callable[..., Settings],
) -> None:
    delays: list[float] = []

    class Observer:
        @hookimpl
        def bgcoor_task_retrying(self, task: Task, delay: float) -> None:
            delays.append(delay)

    registry.register("flaky", Counter(raise_(ValueError("boom"))))
    task = Task.new("flaky", None, 3)
    await broker.push(task)
    settings = fast_settings(retry_backoff=20.0, retry_backoff_max=600.0)
    executor = executor_for(broker, storage, registry, settings, Observer())
    await executor.execute(await reserve_one(broker))

    stored = await record(storage, task)
    assert stored.status is TaskStatus.RETRYING
    assert stored.attempts == 1
    assert stored.error == "ValueError: boom"
    assert stored.traceback is not None
    assert "ValueError: boom" in stored.traceback
    assert len(delays) == 1
    assert 10.0 <= delays[0] <= 20.0
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.reserved) == (0, 1, 0)  # waiting out the delay


async def test_exactly_max_retries_plus_one_attempts_then_dead(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    counter = Counter(raise_(RuntimeError("still broken")))
    registry.register("broken", counter)
    task = Task.new("broken", {"k": 1}, 2)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 3

    assert counter.calls == 3
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert stored.attempts == 3
    assert stored.error == "RuntimeError: still broken"
    letters = await broker.dead_letters("default")
    assert [letter.id for letter in letters] == [task.id]
    assert letters[0].reason == "max_retries exceeded (2)"
    assert letters[0].task is not None
    assert letters[0].task.status is TaskStatus.DEAD
    await assert_broker_empty(broker, dead=1)


async def test_zero_retries_means_one_attempt(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    counter = Counter(raise_(RuntimeError("x")))
    registry.register("once", counter)
    task = Task.new("once", None, 0)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 1
    assert counter.calls == 1
    assert (await record(storage, task)).status is TaskStatus.DEAD


async def test_non_retryable_error_fails_at_once(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    counter = Counter(raise_(NonRetryableError("card declined")))
    registry.register("charge", counter)
    task = Task.new("charge", None, 5)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 1

    assert counter.calls == 1
    stored = await record(storage, task)
    assert stored.status is TaskStatus.FAILED
    assert stored.attempts == 1
    assert stored.error == "NonRetryableError: card declined"
    assert stored.traceback is not None
    assert "card declined" in stored.traceback
    assert await broker.dead_letters("default") == []
    await assert_broker_empty(broker)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionError("reset"), TaskStatus.RETRYING),
        (TimeoutError("slow peer"), TaskStatus.RETRYING),  # an OSError subclass
        (ValueError("bug"), TaskStatus.FAILED),
    ],
)
async def test_retry_on_limits_which_exceptions_are_retried(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    raised: Exception,
    expected: TaskStatus,
) -> None:
    registry.register("net", Counter(raise_(raised)), TaskOptions(retry_on=(OSError,)))
    task = Task.new("net", None, 3)
    await broker.push(task)
    await executor_for(broker, storage, registry, settings).execute(await reserve_one(broker))
    stored = await record(storage, task)
    assert stored.status is expected
    assert stored.error == f"{type(raised).__name__}: {raised}"


@pytest.mark.parametrize("attempt", [64, 1_025, 10**6])
def test_backoff_delay_saturates_at_its_cap_for_any_attempt(attempt: int) -> None:
    """Regression: ``2 ** (attempt - 1)`` overflowed a float after attempt 1,024 and the
    task was dead-lettered as worker_lost although no worker died."""
    for _ in range(20):
        assert 150.0 <= backoff_delay(attempt, 1.0, 300.0) <= 300.0
