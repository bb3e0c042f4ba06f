"""Executor: one reservation from start to a settled state, on the memory backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from bgcoor_core import (
    Codec,
    Executor,
    MemoryBroker,
    MemoryStorage,
    Message,
    NonRetryableError,
    Reservation,
    Settings,
    StaleLeaseError,
    Task,
    TaskOptions,
    TaskRegistry,
    TaskStatus,
    build_plugin_host,
    hookimpl,
)
from bgcoor_core._executor import backoff_delay

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


# -- success and ordering --------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.calls: list[str] = []


class LoggingStorage(MemoryStorage):
    def __init__(self, codec: Codec, log: Log) -> None:
        super().__init__(codec)
        self.log = log

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        await super().save(task, ttl=ttl)
        self.log.calls.append(f"save {task.status}")


class LoggingBroker(MemoryBroker):
    def __init__(self, codec: Codec, log: Log) -> None:
        super().__init__(codec)
        self.log = log

    async def ack(self, reservation: Reservation) -> None:
        self.log.calls.append("ack")
        await super().ack(reservation)

    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        self.log.calls.append("nack")
        await super().nack(reservation, delay=delay, task=task)

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        self.log.calls.append("dead_letter")
        await super().dead_letter(reservation, reason, task)


async def test_success_stores_the_result_then_acks(
    codec: Codec, registry: TaskRegistry, settings: Settings
) -> None:
    log = Log()
    broker, storage = LoggingBroker(codec, log), LoggingStorage(codec, log)

    async def add(x: int, y: int) -> int:
        return x + y

    registry.register("add", add)
    task = Task.new("add", {"args": [2, 3], "kwargs": {}}, 3)
    await broker.push(task)
    await executor_for(broker, storage, registry, settings).execute(await reserve_one(broker))

    assert log.calls == ["save running", "save succeeded", "ack"]
    stored = await record(storage, task)
    assert stored.status is TaskStatus.SUCCEEDED
    assert stored.result == 5
    assert stored.attempts == 1
    assert stored.error is None
    assert stored.started_at is not None
    assert stored.finished_at is not None
    assert stored.started_at <= stored.finished_at
    await assert_broker_empty(broker)


class StartingBroker(LoggingBroker):
    """Marks each record running as it reserves it and says so (``Reservation.started``),
    as a broker that is also the storage does; completes into ``storage`` only."""

    def __init__(self, codec: Codec, log: Log, storage: MemoryStorage) -> None:
        super().__init__(codec, log)
        self.storage = storage

    def shares_store_with(self, storage: object) -> bool:
        return storage is self.storage

    async def complete(self, reservation: Reservation, task: Task, *, ttl: float | None) -> None:
        self.log.calls.append(f"complete {task.status}")
        await self.storage.save(task, ttl=ttl)
        await super().ack(reservation)

    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> list[Reservation]:
        got = await super().reserve(queues, lease=lease, limit=limit, timeout=timeout)
        for r in got:
            running = r.task.model_copy(
                update={
                    "status": TaskStatus.RUNNING,
                    "attempts": r.task.attempts + 1,
                    "lease_token": r.token,
                }
            )
            self.log.calls.append("reserve marks running")
            await self.storage.save(running)
            r.started = True
        return got


@pytest.mark.parametrize("shared", [True, False], ids=["same-store", "other-store"])
async def test_a_started_reservation_skips_the_running_write_only_into_its_own_store(
    codec: Codec, registry: TaskRegistry, settings: Settings, shared: bool
) -> None:
    log = Log()
    storage = LoggingStorage(codec, log)
    broker = StartingBroker(codec, log, storage if shared else MemoryStorage(codec))
    started: list[Task] = []

    class Watch:
        @hookimpl
        def bgcoor_task_started(self, task: Task) -> None:
            started.append(task.model_copy())

    registry.register("add", lambda x, y: x + y)
    task = Task.new("add", {"args": [2, 3], "kwargs": {}}, 3)
    await storage.save(task)
    log.calls.clear()
    await broker.push(task)
    execute = executor_for(broker, storage, registry, settings, Watch()).execute
    await execute(await reserve_one(broker))

    if shared:  # the one "save running" is the broker's, in reserve: the executor made none
        assert log.calls == [
            "reserve marks running",
            "save running",
            "complete succeeded",
            "save succeeded",
            "ack",
        ]
    else:  # the broker marked its own store; the executor's storage needs its write
        assert log.calls == ["reserve marks running", "save running", "save succeeded", "ack"]
    [seen] = started
    assert (seen.status, seen.attempts) == (TaskStatus.RUNNING, 1)
    stored = await record(storage, task)
    assert (stored.status, stored.result, stored.attempts) == (TaskStatus.SUCCEEDED, 5, 1)


async def test_retry_and_dead_letter_are_recorded_before_the_broker_is_told(
    codec: Codec, registry: TaskRegistry, fast_settings: Callable[..., Settings]
) -> None:
    log = Log()
    broker, storage = LoggingBroker(codec, log), LoggingStorage(codec, log)
    registry.register("fails", Counter(raise_(ValueError("boom"))))
    await broker.push(Task.new("fails", None, 1))
    executor = executor_for(broker, storage, registry, fast_settings(retry_backoff=0.0))
    assert await run_to_end(broker, executor) == 2
    assert log.calls == [
        "save running",
        "save retrying",
        "nack",
        "save running",
        "save dead",
        "dead_letter",
    ]


async def test_a_storage_failure_leaves_the_task_unacked_and_it_comes_back(
    codec: Codec, broker: MemoryBroker, registry: TaskRegistry, settings: Settings
) -> None:
    class FlakyStorage(MemoryStorage):
        failures = 1

        async def save(self, task: Task, *, ttl: float | None = None) -> None:
            if task.status is TaskStatus.SUCCEEDED and self.failures:
                self.failures -= 1
                raise ConnectionError("storage went away")
            await super().save(task, ttl=ttl)

    storage = FlakyStorage(codec)
    counter = Counter()
    registry.register("work", counter)
    task = Task.new("work")
    await broker.push(task)
    executor = executor_for(broker, storage, registry, settings)

    first = await reserve_one(broker, lease=0.2)
    with pytest.raises(ConnectionError):
        await executor.execute(first)
    stats = await broker.stats("default")
    assert stats.reserved == 1  # not acked: the outcome was not stored

    again = await reserve_one(broker, wait=3.0)  # back after the lease ran out
    assert again.deliveries == 2
    await executor.execute(again)
    stored = await record(storage, task)
    assert stored.status is TaskStatus.SUCCEEDED
    assert stored.result == 2  # the second call's outcome: at least once, settled once
    assert counter.calls == 2
    await assert_broker_empty(broker)


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


# -- bad input at the worker -----------------------------------------------------------


async def test_unknown_task_is_dead_lettered_not_retried(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    registry.register("known", Counter())
    task = Task.new("not.registered.here", None, 5)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 1

    letters = await broker.dead_letters("default")
    assert len(letters) == 1
    assert letters[0].reason.startswith("unknown task 'not.registered.here'")
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    assert stored.attempts == 0
    assert stored.error is not None
    assert "unknown task" in stored.error
    await assert_broker_empty(broker, dead=1)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"args": ["seven", 2], "kwargs": {}}, "argument 'x'"),
        ({"args": [1], "kwargs": {}}, "missing a required argument: 'y'"),
        ({"args": [1, 2, 3], "kwargs": {}}, "too many positional arguments"),
        ({"args": [1, 2], "kwargs": {"z": 3}}, "unexpected keyword argument 'z'"),
        ("not the payload shape", "payload must be"),
    ],
)
async def test_bad_payload_is_dead_lettered_without_running(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    payload: Any,
    problem: str,
) -> None:
    calls = 0

    def add(x: int, y: int) -> int:
        nonlocal calls
        calls += 1
        return x + y

    registry.register("add", add)
    task = Task.new("add", payload, 5)
    await broker.push(task)
    assert await run_to_end(broker, executor_for(broker, storage, registry, settings)) == 1

    assert calls == 0
    stored = await record(storage, task)
    assert stored.status is TaskStatus.DEAD
    letters = await broker.dead_letters("default")
    assert letters[0].reason.startswith("bad payload: ")
    assert problem in letters[0].reason


async def test_unserialisable_result_is_a_clear_error(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    class Opaque:
        pass

    registry.register("opaque", Counter(lambda n: Opaque()))
    task = Task.new("opaque", None, 3)
    await broker.push(task)
    await run_to_end(broker, executor_for(broker, storage, registry, settings))
    stored = await record(storage, task)
    assert stored.status in (TaskStatus.DEAD, TaskStatus.FAILED)
    assert stored.result is None
    assert stored.error is not None
    assert "unserialisable result" in stored.error
    assert "Opaque" in stored.error


async def test_an_undecodable_message_is_dead_lettered_with_the_reason(
    broker: MemoryBroker, storage: MemoryStorage, registry: TaskRegistry, settings: Settings
) -> None:
    await broker.push_messages([Message("garbage-1", "default", b"application/json\n{not json")])
    executor = executor_for(broker, storage, registry, settings)
    assert await run_to_end(broker, executor) == 1
    letters = await broker.dead_letters("default")
    assert [letter.id for letter in letters] == ["garbage-1"]
    assert "malformed message" in letters[0].reason
    await assert_broker_empty(broker, dead=1)


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCEEDED])
async def test_the_record_of_an_undecodable_message_is_marked_dead_unless_final(
    broker: MemoryBroker,
    storage: MemoryStorage,
    registry: TaskRegistry,
    settings: Settings,
    status: TaskStatus,
) -> None:
    """E.g. a producer whose serializer the worker does not accept: its record exists."""
    seen: list[tuple[str, str]] = []

    class Watch:
        @hookimpl
        def bgcoor_task_dead_lettered(self, task: Task, reason: str) -> None:
            seen.append((task.id, reason))

    task = Task.new("add", {"args": [1, 2], "kwargs": {}}, 3)
    await storage.save(task)
    if status is not TaskStatus.PENDING:
        await storage.save(task.model_copy(update={"status": TaskStatus.RUNNING}))
    if status is TaskStatus.SUCCEEDED:
        await storage.save(task.model_copy(update={"status": status, "result": 3}))
    before = await record(storage, task)
    await broker.push_messages([Message(task.id, "default", b"application/x-nope\n\x00")])
    executor = executor_for(broker, storage, registry, settings, Watch())
    assert await run_to_end(broker, executor) == 1
    [letter] = await broker.dead_letters("default")
    stored = await record(storage, task)
    if status is TaskStatus.SUCCEEDED:
        assert stored == before
        assert seen == []
    else:
        assert stored.status is TaskStatus.DEAD
        assert stored.error == f"undecodable message: {letter.reason}"
        assert stored.finished_at is not None
        assert seen == [(task.id, letter.reason)]


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


@pytest.mark.parametrize("attempt", [64, 1_025, 10**6])
def test_backoff_delay_saturates_at_its_cap_for_any_attempt(attempt: int) -> None:
    """Regression: ``2 ** (attempt - 1)`` overflowed a float after attempt 1,024 and the
    task was dead-lettered as worker_lost although no worker died."""
    for _ in range(20):
        assert 150.0 <= backoff_delay(attempt, 1.0, 300.0) <= 300.0
