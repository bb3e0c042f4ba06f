"""Schedules for the memory backend: a table on the broker, fired under its lock.

A fire holds the broker's lock and then the storage's (always in that order), so checking
the ledger, the last task's status and storing the new record and message is one step for
every thread of the process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._schedules import (
    Fire,
    FireOutcome,
    ScheduleDefinition,
    ScheduleEntry,
    ScheduleState,
    apply_fire,
)

if TYPE_CHECKING:
    from .memory import MemoryBroker, MemoryStorage


class MemorySchedules:
    """The :class:`~bgcoor_core.ScheduleStore` of a memory broker and storage pair."""

    def __init__(self, broker: MemoryBroker, storage: MemoryStorage) -> None:
        self.broker = broker
        self.storage = storage
        self._table = broker._schedule_table  # shared by every pair of this broker

    async def put_schedules(self, definitions: Sequence[ScheduleDefinition]) -> None:
        now = round(time.time() * 1000)
        with self.broker._lock:
            for definition in definitions:
                old = self._table.get(definition.id)
                state = old.state if old is not None else ScheduleState(since_ms=now)
                self._table[definition.id] = ScheduleEntry(definition, state)

    async def get_schedules(self) -> list[ScheduleEntry]:
        with self.broker._lock:
            return [
                ScheduleEntry(entry.definition, entry.state.model_copy())
                for _, entry in sorted(self._table.items())
            ]

    async def delete_schedule(self, schedule_id: str) -> bool:
        with self.broker._lock:
            return self._table.pop(schedule_id, None) is not None

    async def set_schedule_paused(self, schedule_id: str, paused: bool) -> bool:
        with self.broker._lock:
            entry = self._table.get(schedule_id)
            if entry is None:
                return False
            entry.state.paused = paused
            return True

    async def fire(self, requests: Sequence[Fire]) -> list[FireOutcome]:
        with self.broker._lock, self.storage._lock:
            return [self._fire(request) for request in requests]

    def _fire(self, request: Fire) -> FireOutcome:
        entry = self._table.get(request.schedule_id)
        state = None if entry is None else entry.state
        last = None
        if state is not None and state.last_task_id is not None:
            record = self.storage._live(state.last_task_id)
            last = None if record is None else record.status
        outcome = apply_fire(state, request, last)
        if outcome is FireOutcome.FIRED:
            assert request.task is not None
            assert request.message is not None
            self.storage._insert(request.task)
            self.broker._push_locked([request.message])
        return outcome
