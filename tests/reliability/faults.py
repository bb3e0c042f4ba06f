"""Fault injection without touching the core: a plugin serving ``faulty+<scheme>://``.

``faulty+sqlite:///jobs.db`` opens the backend of ``sqlite:///jobs.db`` and wraps it; the
wrapper passes every call through, except that storing the outcome of a task called with
``crash=True`` first kills the process (``os._exit(1)``). That is the moment between the
handler's return (its side effect is done) and the ack: the atomic "store and ack"
(``complete``) of a backend that has one, else the outcome ``save`` that precedes the
ack. Each task crashes there once: a marker file named after its id records the crash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgcoor_core import (
    AtomicCompletion,
    BackendContext,
    Broker,
    BrokerRegistry,
    DeadLetter,
    Message,
    QueueStats,
    Reservation,
    Storage,
    StorageRegistry,
    Task,
    TaskStatus,
    hookimpl,
)

PREFIX = "faulty+"
# The class below defines a method named ``list``; these aliases keep annotations clear.
Letters = list[DeadLetter]
Reservations = list[Reservation]
Names = list[str]
Records = list[Task]


class FaultyBackend(Broker, Storage):
    """Broker and storage in one object, delegating to the wrapped pair."""

    def __init__(self, broker: Broker, storage: Storage, fault_dir: Path) -> None:
        Broker.__init__(self, broker.codec)
        self.inner = broker
        self.inner_storage = storage
        self.fault_dir = fault_dir
        self.capabilities = broker.capabilities  # type: ignore[misc]  # the wrapped broker's

    def crash_if_marked(self, task: Task) -> None:
        """Exit the process if ``task`` asks for a crash and has not crashed yet."""
        if task.status is not TaskStatus.SUCCEEDED or not isinstance(task.payload, dict):
            return
        if not task.payload.get("kwargs", {}).get("crash"):
            return
        try:
            fd = os.open(self.fault_dir / task.id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # crashed here once already: let it through this time
        os.close(fd)
        os._exit(1)

    # -- the two places an outcome is stored before the ack ------------------------------

    def shares_store_with(self, storage: Storage) -> bool:
        inner = self.inner
        return (
            storage is self
            and isinstance(inner, AtomicCompletion)
            and inner.shares_store_with(self.inner_storage)
        )

    async def complete(self, reservation: Reservation, task: Task, *, ttl: float | None) -> None:
        self.crash_if_marked(task)
        assert isinstance(self.inner, AtomicCompletion)
        await self.inner.complete(reservation, task, ttl=ttl)

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        self.crash_if_marked(task)
        await self.inner_storage.save(task, ttl=ttl)

    # -- everything else passes through --------------------------------------------------

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        await self.inner_storage.save_many(tasks)
        await self.inner.push_messages(messages)

    async def push_messages(self, messages: Sequence[Message]) -> None:
        await self.inner.push_messages(messages)

    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> Reservations:
        return await self.inner.reserve(queues, lease=lease, limit=limit, timeout=timeout)

    async def ack(self, reservation: Reservation) -> None:
        await self.inner.ack(reservation)

    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        await self.inner.nack(reservation, delay=delay, task=task)

    async def extend(self, reservation: Reservation, lease: float) -> None:
        await self.inner.extend(reservation, lease)

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        await self.inner.dead_letter(reservation, reason, task)

    async def dead_letters(self, queue: str, *, limit: int = 100, offset: int = 0) -> Letters:
        return await self.inner.dead_letters(queue, limit=limit, offset=offset)

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> Names:
        return await self.inner.requeue_dead(queue, ids)

    async def purge_dead(self, queue: str) -> int:
        return await self.inner.purge_dead(queue)

    async def stats(self, queue: str) -> QueueStats:
        return await self.inner.stats(queue)

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(queue)

    async def queues(self) -> Names:
        return await self.inner.queues()

    async def save_many(self, tasks: Sequence[Task]) -> None:
        await self.inner_storage.save_many(tasks)

    async def get(self, task_id: str) -> Task | None:
        return await self.inner_storage.get(task_id)

    async def list(self, **filters: Any) -> Records:
        return await self.inner_storage.list(**filters)

    async def counts(self) -> dict[TaskStatus, int]:
        return await self.inner_storage.counts()

    async def delete_expired(self) -> int:
        return await self.inner_storage.delete_expired()

    async def wait(self, task_id: str, *, timeout: float | None) -> Task:
        return await self.inner_storage.wait(task_id, timeout=timeout)

    async def close(self) -> None:
        await self.inner.close()
        if self.inner_storage is not self.inner:  # type: ignore[comparison-overlap]
            await self.inner_storage.close()


class FaultPlugin:
    """Adds ``faulty+<scheme>`` for every broker and storage scheme registered before it
    (entry-point plugins load before the ones a manager is given)."""

    def __init__(self, fault_dir: Path | None) -> None:
        self.fault_dir = fault_dir
        self._brokers: BrokerRegistry | None = None
        self._storages: StorageRegistry | None = None

    # trylast: it wraps the schemes every other plugin registered, so it runs after them
    @hookimpl(trylast=True)
    def bgcoor_register_brokers(self, brokers: BrokerRegistry) -> None:
        self._brokers = brokers
        for scheme in brokers.schemes():
            if not scheme.startswith(PREFIX):
                brokers.add(PREFIX + scheme, self.open)

    @hookimpl(trylast=True)
    def bgcoor_register_storages(self, storages: StorageRegistry) -> None:
        self._storages = storages
        for scheme in storages.schemes():
            if not scheme.startswith(PREFIX):
                storages.add(PREFIX + scheme, self.open)

    def open(self, url: str, context: BackendContext) -> FaultyBackend:
        assert self._brokers is not None
        assert self._storages is not None
        assert self.fault_dir is not None, "REL_FAULT_DIR must be set to use faulty+ URLs"
        inner_url = url.removeprefix(PREFIX)
        broker = self._brokers.lookup(inner_url).factory(inner_url, context)
        if isinstance(broker, Storage):
            storage: Storage = broker
        else:
            storage = self._storages.lookup(inner_url).factory(inner_url, context)
        return FaultyBackend(broker, storage, self.fault_dir)
