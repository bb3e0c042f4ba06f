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
    ACTIVE,
    WAITING,
    Fire,
    FireOutcome,
    Overlap,
    ScheduleDefinition,
    ScheduleEntry,
    ScheduleState,
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
        if entry is None:
            return FireOutcome.REMOVED
        state = entry.state
        if state.paused:
            return FireOutcome.PAUSED
        last = self._last_status(state)
        if request.release:
            return self._release(state, request, last)
        if state.last_tick_ms is not None and request.tick_ms <= state.last_tick_ms:
            return FireOutcome.ALREADY
        state.last_tick_ms = request.tick_ms
        state.missed += request.missed
        if request.task is None:
            return FireOutcome.ADVANCED
        if request.overlap is not Overlap.ALLOW and last in ACTIVE:
            return self._overlapping(state, request, last)
        return self._enqueue(state, request)

    def _overlapping(self, state: ScheduleState, request: Fire, last: object) -> FireOutcome:
        """The last task is still going: skip the tick, or buffer it behind a running one."""
        if request.overlap is Overlap.SKIP or last in WAITING or state.buffered_tick_ms is not None:
            state.skipped += 1
            return FireOutcome.SKIPPED
        state.buffered_tick_ms = request.tick_ms
        return FireOutcome.BUFFERED

    def _release(self, state: ScheduleState, request: Fire, last: object) -> FireOutcome:
        if state.buffered_tick_ms is None:
            return FireOutcome.ALREADY
        if last in ACTIVE:
            return FireOutcome.BUFFERED
        state.buffered_tick_ms = None
        return self._enqueue(state, request)

    def _last_status(self, state: ScheduleState) -> object:
        if state.last_task_id is None:
            return None
        record = self.storage._live(state.last_task_id)
        return None if record is None else record.status

    def _enqueue(self, state: ScheduleState, request: Fire) -> FireOutcome:
        task, message = request.task, request.message
        assert task is not None
        assert message is not None
        self.storage._insert(task)
        self.broker._push_locked([message])
        state.last_task_id = task.id
        state.fired += 1
        return FireOutcome.FIRED
