"""Unique keys for the memory backend: taken under the broker's and storage's locks, in
the step that stores the records and pushes the messages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._broker import Message
from .._errors import DuplicateTaskError
from .._task import Task
from .._unique import holds, take_keys, unique_until

if TYPE_CHECKING:
    from .._storage import Storage
    from .memory import MemoryBroker, MemoryStorage


class MemoryUniques:
    """The :class:`~bgcoor_core.UniqueStore` and :class:`~bgcoor_core.AtomicEnqueue` of a
    memory broker and storage pair: both locks held for the whole step."""

    def __init__(self, broker: MemoryBroker, storage: MemoryStorage) -> None:
        self.broker = broker
        self.storage = storage
        #: key -> (holder's task id, end of its window or None)
        self._keys = broker._unique_keys

    def shares_store_with(self, storage: Storage) -> bool:
        return storage is self.storage

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        with self.broker._lock, self.storage._lock:
            for task in tasks:
                if self.storage._live(task.id) is not None:
                    raise DuplicateTaskError(f"task {task.id} already has a record")
            self.broker._push_locked(messages, limited=True)  # refused whole, before a record
            for task, message in zip(tasks, messages, strict=True):
                self.storage._insert(task, message)

    async def enqueue_unique(
        self, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> list[str | None]:
        with self.broker._lock, self.storage._lock:
            now = time.time()
            holders, taken = take_keys(tasks, lambda key: self._holder(key, now))
            for task, holder in zip(tasks, holders, strict=True):
                if holder is None and self.storage._live(task.id) is not None:
                    raise DuplicateTaskError(f"task {task.id} already has a record")
            chosen = [i for i, holder in enumerate(holders) if holder is None]
            self.broker._push_locked([messages[i] for i in chosen], limited=True)
            for i in chosen:
                self.storage._insert(tasks[i], messages[i])
            for key, task in taken.items():
                self._keys[key] = (task.id, unique_until(task))
            return holders

    def _holder(self, key: str, now: float) -> str | None:
        held = self._keys.get(key)
        if held is None:
            return None
        record = self.storage._live(held[0])
        if holds(None if record is None else record.status, held[1], now):
            return held[0]
        del self._keys[key]  # released: its holder ended (and its window passed)
        return None
