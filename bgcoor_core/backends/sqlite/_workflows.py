"""Workflows in the ``workflows`` table, their members' messages ``parked`` until released.

Each step is one ``BEGIN IMMEDIATE`` transaction, which takes the file's write lock before
the first read: storing a member's outcome, reading the workflow's state, applying
:func:`~bgcoor_core.kit.apply_outcome` and its effects (dependents' records ``pending``
and their parked messages moved into ``messages``, cancelled members' records
``cancelled`` and their parked messages dropped, TTLs once it ended) and writing its
progress back happen as one step for every process that shares the file (the row's
layout: :mod:`._workflow_rows`). A parked message sits in its own table, so the reserve's
query and index never see it.

A workflow row that cannot be read (not JSON, not a state or progress, or one that does
not fit its graph), or that does not list the member at its node, fails only that workflow:
``save_member`` and ``complete_member`` still store the member's outcome (and ack it),
since running it again could not repair the row and would only run it again forever;
the workflow is not advanced, and an error naming the workflow and the problem is
logged. ``get_workflow`` and ``cancel_workflow`` of that workflow raise
:class:`~bgcoor_core.CorruptRecordError` naming it; other workflows are unaffected.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from ..._broker import Message, Reservation
from ..._errors import CorruptRecordError, DuplicateTaskError
from ..._task import Task, TaskStatus, validate_queue_name
from ..._workflows import (
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
from . import _records, _workflow_rows
from ._connection import Connection, transaction
from ._workflow_rows import Parsed, RowState

log = logging.getLogger("bgcoor.sqlite")

#: Inserts ready messages inside the caller's transaction (the enqueue's own insert).
Push = Callable[[sqlite3.Connection, Sequence[Message]], None]
#: Stores a final record and acks its message while the lease holds, inside the caller's
#: transaction; :class:`StaleLeaseError` before any change otherwise. True if the freed
#: concurrency slot made a parked message ready (consumers are woken).
Complete = Callable[[sqlite3.Connection, str, str, Task, float | None], bool]

CANCELLED_ERROR = "cancelled: its workflow ended"
_PARK = (
    "INSERT INTO parked (workflow_id, node, id, queue, priority, body, eta, gate) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UNPARK = (
    "DELETE FROM parked WHERE workflow_id = ? AND node = ? "
    "RETURNING id, queue, priority, body, eta, gate"
)


class SQLiteWorkflows:
    """The :class:`~bgcoor_core.WorkflowStore` of an :class:`SQLiteBackend` (its own
    broker and storage)."""

    def __init__(
        self, db: Connection, push: Push, complete: Complete, wake: Callable[[], None]
    ) -> None:
        self.db = db
        self._push = push
        self._complete = complete
        self._wake = wake
        self._parsed = Parsed()  # used on the connection's thread only

    async def submit_workflow(
        self, state: WorkflowState, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        for message in messages:
            validate_queue_name(message.queue)
        await self.db.run(submit, state, tasks, messages, self._push)
        self._wake()

    async def save_member(self, task: Task) -> None:
        if await self.db.run(save_member, task, self._parsed, self._push):
            self._wake()

    async def complete_member(self, reservation: Reservation, task: Task) -> None:
        token = reservation.token
        pushed = await self.db.run(
            complete_member,
            reservation.task.id,
            token,
            task,
            self._complete,
            self._parsed,
            self._push,
        )
        if pushed:
            self._wake()

    async def reopen_member(self, task: Task) -> None:
        if await self.db.run(reopen_member, task, self._parsed, self._push):
            self._wake()

    async def cancel_workflow(self, workflow_id: str) -> bool:
        return await self.db.run(cancel, workflow_id, self._parsed)

    async def get_workflow(self, workflow_id: str) -> WorkflowState | None:
        return await self.db.run(_workflow_rows.read_whole, self._parsed, workflow_id)


# -- statements, run on the connection's thread ----------------------------------------


def submit(
    conn: sqlite3.Connection,
    state: WorkflowState,
    tasks: Sequence[Task],
    messages: Sequence[Message],
    push: Push,
) -> None:
    """The state, every record, the roots' messages and the others parked: all or none."""
    by_id = {m.id: m for m in messages}
    waiting = [t for t in tasks if t.status is TaskStatus.WAITING]
    with transaction(conn):
        try:
            _workflow_rows.insert(conn, state)
        except sqlite3.IntegrityError:
            raise DuplicateTaskError(f"workflow {state.id} already exists") from None
        # as the atomic enqueue does: messages first, then every record (any refuses all)
        push(conn, [by_id[t.id] for t in tasks if t.status is not TaskStatus.WAITING])
        _records.insert_new(conn, tasks)
        for task in waiting:
            if conn.execute("SELECT 1 FROM messages WHERE id = ?", (task.id,)).fetchone():
                raise DuplicateTaskError(f"task {task.id} is already in the broker")
        conn.executemany(
            _PARK,
            [(state.id, int(t.headers[NODE_HEADER]), *_columns(by_id[t.id])) for t in waiting],
        )


def _columns(m: Message) -> tuple[str, str, int, bytes, float | None, str | None]:
    return (m.id, m.queue, m.priority, m.body, m.eta, m.gate)


def save_member(conn: sqlite3.Connection, task: Task, parsed: Parsed, push: Push) -> bool:
    """``save`` of the record, then the workflow's step; True if messages were pushed."""
    with transaction(conn):
        _records.write(conn, task, None)  # no expiry while its workflow runs
        return _advance(conn, task, parsed, push)


def complete_member(
    conn: sqlite3.Connection,
    message_id: str,
    token: str,
    task: Task,
    complete: Complete,
    parsed: Parsed,
    push: Push,
) -> bool:
    """``complete`` (a stale lease changes nothing), then the workflow's step; True if
    messages were pushed or made ready."""
    with transaction(conn):
        freed = complete(conn, message_id, token, task, None)
        return _advance(conn, task, parsed, push) or freed


def reopen_member(conn: sqlite3.Connection, task: Task, parsed: Parsed, push: Push) -> bool:
    """The requeued record, then :func:`reopen`; True if messages were pushed."""
    with transaction(conn):
        _records.write(conn, task, None)
        member = member_of(task)
        assert member is not None
        try:
            state = _workflow_rows.read(conn, parsed, member[0])
            effects = None if state is None else reopen(state, member[1])
        except CorruptRecordError as exc:
            log.error("task %s: requeued, its workflow not reopened: %s", task.id, exc)
            return False
        if state is None or effects is None:
            return False
        return _apply(conn, state, effects, push)


def cancel(conn: sqlite3.Connection, workflow_id: str, parsed: Parsed) -> bool:
    with transaction(conn):
        state = _workflow_rows.read(conn, parsed, workflow_id)
        if state is None:
            return False
        effects = cancel_all(state)
        if not effects.ended:  # it had ended
            return False
        _apply(conn, state, effects, None)
        return True


# -- the step, inside the caller's transaction -----------------------------------------


def _advance(conn: sqlite3.Connection, task: Task, parsed: Parsed, push: Push) -> bool:
    if not task.status.is_final:
        return False
    try:
        member = member_of(task)
    except (KeyError, ValueError):
        log.error("task %s: outcome stored; its workflow headers cannot be read", task.id)
        return False
    if member is None:
        return False
    workflow_id, key = member
    try:
        state = _workflow_rows.read(conn, parsed, workflow_id, member=key)
        if state is not None and (
            key not in range(len(state.tasks)) or state.tasks[key] != task.id
        ):
            raise _workflow_rows.corrupt(workflow_id, f"its node {key} is not task {task.id}")
        effects = None if state is None else apply_outcome(state, key, task.status, task.error)
    except CorruptRecordError as exc:
        log.error("task %s: outcome stored, its workflow not advanced: %s", task.id, exc)
        return False
    if state is None or effects is None:
        return False
    if effects.duplicate:
        ttl = state.submitted.ttls[key]
        if state.left == 0 and ttl is not None:
            # run again on its own after its workflow ended (a requeue it did not reopen)
            conn.execute(
                "UPDATE tasks SET expires_at = ? WHERE id = ?", (time.time() + ttl, task.id)
            )
        return False
    return _apply(conn, state, effects, push)


def _apply(conn: sqlite3.Connection, state: RowState, effects: Effects, push: Push | None) -> bool:
    """Carry out ``effects`` and write the state back; True if messages were pushed."""
    released = []
    for key in effects.release:
        _set_status(conn, state.tasks[key], TaskStatus.PENDING)
        message = _unpark(conn, state.id, key)
        if message is not None:
            released.append(message)
    if released:
        assert push is not None  # only outcomes and reopens release
        push(conn, released)
    cancelled = state.status is WorkflowStatus.CANCELLED
    for key in effects.cancel:  # a member queued or running has no parked message
        if cancelled:  # a failed workflow keeps them: a requeue may restore them
            conn.execute("DELETE FROM parked WHERE workflow_id = ? AND node = ?", (state.id, key))
        _set_status(conn, state.tasks[key], TaskStatus.CANCELLED)
    for key in effects.restore:
        _set_status(conn, state.tasks[key], TaskStatus.WAITING)
    expires: tuple[float | None] | None = None  # unchanged
    if effects.ended:
        now = time.time()
        ttls = state.submitted.ttls
        conn.executemany(
            "UPDATE tasks SET expires_at = ? WHERE id = ?",
            [(now + t, i) for i, t in zip(state.tasks, ttls, strict=True) if t is not None],
        )
        if state.status is not WorkflowStatus.FAILED:
            conn.execute("DELETE FROM parked WHERE workflow_id = ?", (state.id,))
        keep = expiry(state.submitted)
        expires = (None if keep is None else now + keep,)
    if effects.reopened:
        conn.executemany(
            "UPDATE tasks SET expires_at = NULL WHERE id = ?", [(i,) for i in state.tasks]
        )
        expires = (None,)
    _workflow_rows.write(conn, state, expires)
    return bool(released)


def _unpark(conn: sqlite3.Connection, workflow_id: str, key: int) -> Message | None:
    row = conn.execute(_UNPARK, (workflow_id, key)).fetchone()
    if row is None:
        log.warning("workflow %s: node %d had no parked message", workflow_id, key)
        return None
    message_id, queue, priority, body, eta, gate = row
    return Message(message_id, queue, body, priority, eta, gate)


def _set_status(conn: sqlite3.Connection, task_id: str, status: TaskStatus) -> None:
    """A member's record moves on: released, cancelled if not final yet, or (restored)
    waiting again if its workflow had cancelled it."""
    try:
        record = _records.get(conn, task_id)
    except CorruptRecordError as exc:  # its message still goes (or goes away)
        log.warning("workflow member %s: record left as it is: %s", task_id, exc)
        return
    if record is None:
        return
    if record.status.is_final:  # stays final, but for one its workflow dropped: a reopen
        if status is TaskStatus.CANCELLED or not _dropped(record):  # restores or releases it
            return
        record.finished_at = record.error = None
    elif status is TaskStatus.WAITING:
        return
    record.status = status
    if status is TaskStatus.CANCELLED:
        record.finished_at = datetime.now(UTC)
        record.error = record.error or CANCELLED_ERROR
    conn.execute(
        "UPDATE tasks SET status = ?, record = ?, before_start = NULL WHERE id = ?",
        (status.value, record.model_dump_json(), task_id),
    )


def _dropped(task: Task) -> bool:
    """Cancelled by its workflow (not by anyone else): a reopen may release it again."""
    return task.status is TaskStatus.CANCELLED and task.error == CANCELLED_ERROR
