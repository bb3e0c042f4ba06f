"""Workflows for the memory backend: their states on the broker, stepped under its lock.

Every step holds the broker's lock and then the storage's (the order the schedule store
uses too), so storing a member's outcome, counting it and releasing its dependents is one
step for every thread of the process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .._broker import Message, Reservation
from .._errors import DuplicateTaskError
from .._storage import check_transition
from .._task import Task, TaskStatus
from .._workflows import (
    NODE_HEADER,
    Effects,
    WorkflowState,
    WorkflowStatus,
    apply_outcome,
    cancel_all,
    expiry,
    member_of,
    reopen,
)

CANCELLED_ERROR = "cancelled: its workflow ended"

if TYPE_CHECKING:
    from .memory import MemoryBroker, MemoryStorage


@dataclass(slots=True)
class Running:
    """A workflow's state and the messages of members not released yet."""

    state: WorkflowState
    parked: dict[int, Message] = field(default_factory=dict)
    #: When an ended workflow is forgotten (``time.monotonic()``), if ever.
    expires: float | None = None


class MemoryWorkflows:
    """The :class:`~bgcoor_core.WorkflowStore` of a memory broker and storage pair."""

    def __init__(self, broker: MemoryBroker, storage: MemoryStorage) -> None:
        self.broker = broker
        self.storage = storage
        self._table = broker._workflow_table
        self._sweep_at = 64  # ended workflows are swept when the table grows past this

    async def submit_workflow(
        self, state: WorkflowState, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        by_id = {m.id: m for m in messages}
        with self.broker._lock, self.storage._lock:
            self._sweep()
            if self._running(state.id) is not None:
                raise DuplicateTaskError(f"workflow {state.id} already exists")
            for task in tasks:
                if self.storage._live(task.id) is not None:
                    raise DuplicateTaskError(f"task {task.id} already has a record")
            running = Running(state.model_copy(deep=True))
            ready = [by_id[t.id] for t in tasks if t.status is not TaskStatus.WAITING]
            self.broker._push_locked(ready)
            for task in tasks:
                self.storage._insert(task)
                if task.status is TaskStatus.WAITING:
                    running.parked[int(task.headers[NODE_HEADER])] = by_id[task.id]
            self._table[state.id] = running

    async def save_member(self, task: Task) -> None:
        with self.broker._lock, self.storage._lock:
            self._store(task)
            self._advance(task)

    async def complete_member(self, reservation: Reservation, task: Task) -> None:
        with self.broker._lock, self.storage._lock:
            self.broker._held(reservation)  # a stale lease changes nothing
            self._store(task)
            del self.broker._entries[reservation.task.id]
            self._advance(task)

    async def reopen_member(self, task: Task) -> None:
        with self.broker._lock, self.storage._lock:
            self.storage._insert(task)
            member = member_of(task)
            assert member is not None
            running = self._running(member[0])
            if running is None:
                return
            effects = reopen(running.state, member[1])
            if effects is not None:
                self._apply(running, effects)

    async def cancel_workflow(self, workflow_id: str) -> bool:
        with self.broker._lock, self.storage._lock:
            running = self._running(workflow_id)
            if running is None or running.state.status.is_final:
                return False
            self._apply(running, cancel_all(running.state))
            return True

    async def get_workflow(self, workflow_id: str) -> WorkflowState | None:
        with self.broker._lock:
            running = self._running(workflow_id)
            return None if running is None else running.state.model_copy(deep=True)

    # -- inside the locks -------------------------------------------------------------

    def _store(self, task: Task) -> None:
        old = self.storage._live(task.id)
        if old is not None:
            check_transition(task.id, old.status, old.lease_token, task.status, task.lease_token)
        self.storage._insert(task)  # no expiry while its workflow runs

    def _advance(self, task: Task) -> None:
        member = member_of(task)
        assert member is not None
        running = self._running(member[0])
        if running is None or not task.status.is_final:
            return
        state = running.state
        effects = apply_outcome(state, member[1], task.status, task.error)
        ttl = state.ttls[member[1]]
        if effects.duplicate and state.left == 0 and ttl is not None:
            # run again on its own after its workflow ended (a requeue it did not reopen)
            self.storage._expires[task.id] = time.monotonic() + ttl
        self._apply(running, effects)

    def _running(self, workflow_id: str) -> Running | None:
        running = self._table.get(workflow_id)
        expires = None if running is None else running.expires
        if expires is not None and expires <= time.monotonic():
            del self._table[workflow_id]
            return None
        return running

    def _sweep(self) -> None:
        if len(self._table) > self._sweep_at:
            for workflow_id in list(self._table):
                self._running(workflow_id)
            self._sweep_at = 2 * len(self._table) + 64

    def _apply(self, running: Running, effects: Effects) -> None:
        state = running.state
        released = []
        for key in effects.release:
            self._set_status(state.tasks[key], TaskStatus.PENDING)
            released.append(running.parked.pop(key))
        if released:
            self.broker._push_locked(released)
        cancelled = state.status is WorkflowStatus.CANCELLED
        for key in effects.cancel:
            if cancelled:  # a failed workflow keeps them: a requeue may restore them
                running.parked.pop(key, None)
            self._set_status(state.tasks[key], TaskStatus.CANCELLED)
        for key in effects.restore:
            self._set_status(state.tasks[key], TaskStatus.WAITING)
        self._expire(running, effects)

    def _expire(self, running: Running, effects: Effects) -> None:
        """TTLs: set on every record once the workflow ended, lifted if it reopened."""
        state, now = running.state, time.monotonic()
        if effects.ended:
            for task_id, ttl in zip(state.tasks, state.ttls, strict=True):
                if ttl is not None and task_id in self.storage._records:
                    self.storage._expires[task_id] = now + ttl
            keep = expiry(state)
            running.expires = None if keep is None else now + keep
            if state.status is not WorkflowStatus.FAILED:
                running.parked.clear()
        if effects.reopened:
            running.expires = None
            for task_id in state.tasks:
                self.storage._expires.pop(task_id, None)

    def _set_status(self, task_id: str, status: TaskStatus) -> None:
        """A member's record moves on: released, cancelled if not final yet, or (restored)
        waiting again if cancelled by its workflow."""
        record = self.storage._live(task_id)
        if record is None:
            return
        task = record.task()
        if task.status.is_final:  # stays final, but for one its workflow dropped: a reopen
            if status is TaskStatus.CANCELLED or not _dropped(task):  # restores or releases it
                return
            task.finished_at = task.error = None
        elif status is TaskStatus.WAITING:
            return
        task.status = status
        if status is TaskStatus.CANCELLED:
            task.finished_at = datetime.now(UTC)
            task.error = task.error or CANCELLED_ERROR
        self.storage._insert(task)


def _dropped(task: Task) -> bool:
    """Cancelled by its workflow (not by anyone else): a reopen may release it again."""
    return task.status is TaskStatus.CANCELLED and task.error == CANCELLED_ERROR
