"""Issue 10, class 5: an enqueue whose connection broke mid-call is tried again with the
same ids; a duplicate then is the first try having gone through, not a second task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from bgcoor_core import (
    DuplicateTaskError,
    EnqueueUncertainError,
    MemoryBroker,
    MemoryStorage,
    Message,
    Storage,
    Task,
    TaskManager,
    TaskStatus,
    hookimpl,
)


class _Flaky:
    """Fails the next ``failures`` calls with ConnectionError, before or after doing the
    work (``after``: the write happened, only the reply was lost)."""

    def __init__(self, failures: int, *, after: bool) -> None:
        self.failures = failures
        self.after = after
        self.calls = 0

    async def around(self, work: Callable[[], Awaitable[None]]) -> None:
        self.calls += 1
        if self.failures and not self.after:
            self.failures -= 1
            raise ConnectionError("connection reset by peer")
        await work()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection reset by peer")


class TwoStepBroker(MemoryBroker):
    """A memory broker that, like a broker paired with another product's storage, stores
    records and messages in two steps: the path these tests are about."""

    def atomic_enqueue(self, storage: Storage) -> None:
        return None


class FlakyBroker(TwoStepBroker):
    def __init__(self, flaky: _Flaky) -> None:
        super().__init__()
        self.flaky = flaky

    async def push_messages(self, messages: Sequence[Message]) -> None:
        await self.flaky.around(lambda: super(FlakyBroker, self).push_messages(messages))


class FlakyStorage(MemoryStorage):
    def __init__(self, flaky: _Flaky) -> None:
        super().__init__()
        self.flaky = flaky

    async def save_many(self, tasks: Sequence[Task]) -> None:
        await self.flaky.around(lambda: super(FlakyStorage, self).save_many(tasks))


class _Backends:
    def __init__(self, broker: MemoryBroker, storage: MemoryStorage) -> None:
        self.broker, self.storage = broker, storage

    @hookimpl
    def bgcoor_register_brokers(self, brokers: Any) -> None:
        brokers.add("flaky", lambda url, context: self.broker)

    @hookimpl
    def bgcoor_register_storages(self, storages: Any) -> None:
        storages.add("flaky", lambda url, context: self.storage)


def _manager(broker: MemoryBroker, storage: MemoryStorage, **settings: Any) -> TaskManager:
    return TaskManager(
        plugins=[_Backends(broker, storage)],
        broker_url="flaky://",
        storage_url="flaky://",
        **settings,
    )


@pytest.mark.parametrize("after", [False, True], ids=["lost-request", "lost-reply"])
@pytest.mark.parametrize("side", ["broker", "storage"])
async def test_a_broken_enqueue_is_retried_and_happens_exactly_once(side: str, after: bool) -> None:
    flaky = _Flaky(1, after=after)
    broker = FlakyBroker(flaky) if side == "broker" else TwoStepBroker()
    storage = FlakyStorage(flaky) if side == "storage" else MemoryStorage()
    manager = _manager(broker, storage)

    @manager.task(name="jobs.double")
    def double(x: int) -> int:
        return 2 * x

    handle = await double.enqueue(21)
    assert flaky.calls == 2  # the failed try and the retry
    assert await broker.queue_length("default") == 1
    assert (await manager.get(handle.id)).status is TaskStatus.PENDING
    assert await manager.drain() == 1
    assert await handle.result(timeout=1) == 42
    await manager.close()


async def test_out_of_retries_the_error_says_the_outcome_is_unknown() -> None:
    flaky = _Flaky(10, after=False)
    broker = FlakyBroker(flaky)
    manager = _manager(broker, MemoryStorage(), enqueue_retries=2)

    @manager.task(name="jobs.double")
    def double(x: int) -> int:
        return 2 * x

    task = double.build((1,), {})
    with pytest.raises(EnqueueUncertainError, match="may or may not have happened") as caught:
        await manager.submit(task)
    assert caught.value.task_ids == [task.id]
    assert flaky.calls == 3
    flaky.failures = 0
    await manager.submit(task)  # the same task again: recognised as already enqueued
    assert await broker.queue_length("default") == 1
    await manager.close()


async def test_only_the_same_task_submitted_again_counts_as_enqueued() -> None:
    manager = _manager(MemoryBroker(), MemoryStorage())

    @manager.task(name="jobs.double")
    def double(x: int) -> int:
        return 2 * x

    task = double.build((1,), {})
    await manager.submit(task)
    await manager.submit(task)  # the very same task again: recognised, not doubled
    assert await manager.broker.queue_length("default") == 1
    other = double.build((2,), {}).model_copy(update={"id": task.id})
    with pytest.raises(DuplicateTaskError, match=task.id):
        await manager.submit(other)
    await manager.close()


class FlakyUniqueBroker(MemoryBroker):
    """Its unique key store loses the reply of its first call (the enqueue happened)."""

    def __init__(self, flaky: _Flaky) -> None:
        super().__init__()
        self.flaky = flaky

    def unique_store(self, storage: Any) -> Any:
        real = super().unique_store(storage)
        flaky = self.flaky

        class Store:
            async def enqueue_unique(
                self, tasks: Sequence[Task], messages: Sequence[Message]
            ) -> list[str | None]:
                holders: list[str | None] = []

                async def work() -> None:
                    holders[:] = await real.enqueue_unique(tasks, messages)

                await flaky.around(work)
                return holders

        return Store() if real is not None else None


@pytest.mark.parametrize("after", [False, True], ids=["lost-request", "lost-reply"])
async def test_a_retried_unique_batch_reports_who_was_deduplicated(after: bool) -> None:
    flaky = _Flaky(1, after=after)
    manager = _manager(FlakyUniqueBroker(flaky), MemoryStorage())

    @manager.task(name="retry.unique")
    async def job(n: int) -> int:
        return n

    # the first holds "a"; the second is deduplicated onto it; the third takes "b"
    tasks = [job.build([n], {}, unique_key=key) for n, key in ((1, "a"), (2, "a"), (3, "b"))]
    handles = await manager.submit_handles(tasks, None)
    assert flaky.calls == 2 + (1 if after else 0)  # after a lost reply: one more step
    assert [(h.id, h.deduplicated) for h in handles] == [
        (tasks[0].id, False),
        (tasks[0].id, True),
        (tasks[2].id, False),
    ]
    assert await manager.storage.get(tasks[1].id) is None
    assert (await manager.broker.stats("default")).ready == 2
    await manager.close()
