"""Executor: one reservation from start to a settled state (success and the order of
writes), on the memory backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    Codec,
    MemoryBroker,
    MemoryStorage,
    Reservation,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
    hookimpl,
)

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
