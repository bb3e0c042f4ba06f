"""Unique key contract: a key is taken in the step that enqueues, by one task at a time,
and is free again once its holder is final and its window over.

A backend passes it by providing ``broker`` and ``completion_storage`` fixtures (as
:class:`WorkflowContract` does); the store under test is
``Backends.pair(broker, completion_storage).uniques``. A pair without one skips.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from .._broker import Broker
from .._errors import DuplicateTaskError
from .._storage import Storage
from .._task import Task, TaskStatus
from .._unique import UNIQUE_HEADER, UNIQUE_UNTIL_HEADER, UniqueStore
from .._wiring import Backends
from ._helpers import ASYNC, DEFAULT, LONG_LEASE, make_task

NAME = "contract.unique"


def _task(key: str | None, window: float | None = None) -> Task:
    task = make_task(NAME)
    if key is not None:
        task.headers[UNIQUE_HEADER] = key
        if window is not None:
            task.headers[UNIQUE_UNTIL_HEADER] = repr(time.time() + window)
    return task


class UniqueContract:
    """Mixin of the unique key store's tests; see the module docstring."""

    @pytest.fixture
    def uniques(self, broker: Broker, completion_storage: Storage | None) -> UniqueStore:
        store = (
            None
            if completion_storage is None
            else Backends.pair(broker, completion_storage).uniques
        )
        if store is None:
            pytest.skip(f"{type(broker).__name__} has no unique key store")
        return store

    async def _enqueue(self, broker: Broker, store: UniqueStore, *tasks: Task) -> list[str | None]:
        return await store.enqueue_unique(tasks, [broker.to_message(t) for t in tasks])

    async def _ready(self, broker: Broker) -> list[str]:
        taken = []
        while got := await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=100, timeout=0):
            taken += [r.task.id for r in got]
        return taken

    async def _finish(self, broker: Broker, storage: Storage, task_id: str) -> None:
        """Run ``task_id`` to ``succeeded`` (it must be the one ready message)."""
        (reservation,) = await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=10, timeout=0)
        assert reservation.task.id == task_id
        task = reservation.task.started(reservation.token, datetime.now(UTC))
        if not reservation.started:
            await storage.save(task)
        task.status, task.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
        await storage.save(task)
        await broker.ack(reservation)

    @ASYNC
    async def test_a_held_key_returns_its_holder_and_enqueues_nothing(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        key = f"k-{uuid.uuid4().hex}"
        first, second, plain = _task(key), _task(key), _task(None)
        assert await self._enqueue(broker, uniques, first) == [None]
        assert await self._enqueue(broker, uniques, second, plain) == [first.id, None]
        assert await completion_storage.get(second.id) is None
        record = await completion_storage.get(plain.id)
        assert record is not None
        assert sorted(await self._ready(broker)) == sorted([first.id, plain.id])

    @ASYNC
    async def test_a_batch_takes_each_key_once(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        key = f"k-{uuid.uuid4().hex}"
        one, two, other = _task(key), _task(key), _task(key + "-other")
        assert await self._enqueue(broker, uniques, one, two, other) == [None, one.id, None]
        assert sorted(await self._ready(broker)) == sorted([one.id, other.id])

    @ASYNC
    async def test_the_key_is_free_once_its_holder_is_final(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        key = f"k-{uuid.uuid4().hex}"
        first = _task(key)
        await self._enqueue(broker, uniques, first)
        (reservation,) = await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0)
        running = reservation.task.started(reservation.token, datetime.now(UTC))
        if not reservation.started:
            await completion_storage.save(running)
        again = _task(key)  # running still holds it
        assert await self._enqueue(broker, uniques, again) == [first.id]
        running.status, running.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
        await completion_storage.save(running)
        await broker.ack(reservation)
        third = _task(key)
        assert await self._enqueue(broker, uniques, third) == [None]
        assert await self._enqueue(broker, uniques, _task(key)) == [third.id]

    @ASYNC
    async def test_a_window_holds_the_key_after_its_holder_ended_until_it_ends(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        key = f"k-{uuid.uuid4().hex}"
        first = _task(key, window=0.6)
        await self._enqueue(broker, uniques, first)
        await self._finish(broker, completion_storage, first.id)
        assert await self._enqueue(broker, uniques, _task(key)) == [first.id]
        await asyncio.sleep(0.8)
        assert await self._enqueue(broker, uniques, _task(key)) == [None]

    @ASYNC
    async def test_a_holder_not_final_keeps_its_key_past_its_window(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        key = f"k-{uuid.uuid4().hex}"
        first = _task(key, window=0.2)
        await self._enqueue(broker, uniques, first)
        await asyncio.sleep(0.4)
        assert await self._enqueue(broker, uniques, _task(key)) == [first.id]

    @ASYNC
    async def test_the_same_task_again_is_a_duplicate(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        task = _task(f"k-{uuid.uuid4().hex}")
        await self._enqueue(broker, uniques, task)
        with pytest.raises(DuplicateTaskError):
            await self._enqueue(broker, uniques, task)
        assert await self._ready(broker) == [task.id]

    @ASYNC
    async def test_concurrent_producers_take_each_key_once(
        self, broker: Broker, completion_storage: Storage, uniques: UniqueStore
    ) -> None:
        prefix = uuid.uuid4().hex
        keys = [f"{prefix}-{k}" for k in range(40)]

        async def producer(seed: int) -> list[str | None]:
            tasks = [_task(keys[(seed * 7 + i) % len(keys)]) for i in range(len(keys))]
            return await self._enqueue(broker, uniques, *tasks)

        results = await asyncio.gather(*(producer(seed) for seed in range(16)))
        enqueued = sum(holder is None for holders in results for holder in holders)
        assert enqueued == len(keys)
        ready = await self._ready(broker)
        assert len(ready) == len(keys)
        holders = {holder for holders in results for holder in holders if holder is not None}
        assert holders <= set(ready)  # every deduplicated task names a real holder
