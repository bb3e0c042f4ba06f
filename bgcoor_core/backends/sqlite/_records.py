"""Task records in the ``tasks`` table (always JSON, whatever the message serializer)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from ..._errors import DecodeError
from ..._storage import check_transition
from ..._task import ALLOWED_TRANSITIONS, Task, TaskStatus
from ._connection import transaction

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def write(conn: sqlite3.Connection, task: Task, ttl: float | None) -> None:
    """Check the transition against the stored record and upsert (inside a transaction)."""
    now = time.time()
    old = conn.execute(
        f"SELECT status, lease_token FROM tasks WHERE id = ? AND {_LIVE}", (task.id, now)
    ).fetchone()
    if old is not None:
        check_transition(task.id, TaskStatus(old[0]), old[1], task.status, task.lease_token)
    conn.execute(
        "INSERT INTO tasks (id, name, queue, status, lease_token, expires_at, record) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
        "queue = excluded.queue, status = excluded.status, lease_token = excluded.lease_token, "
        "expires_at = excluded.expires_at, record = excluded.record, before_start = NULL",
        (
            task.id,
            task.name,
            task.queue,
            task.status.value,
            task.lease_token,
            None if ttl is None else now + ttl,
            task.model_dump_json(),
        ),
    )


def save(conn: sqlite3.Connection, task: Task, ttl: float | None) -> None:
    with transaction(conn):
        write(conn, task, ttl)


def save_many(conn: sqlite3.Connection, tasks: Sequence[Task]) -> None:
    with transaction(conn):
        for task in tasks:
            write(conn, task, None)


def start(conn: sqlite3.Connection, task_id: str, token: str, now: float) -> bool:
    """Mark the record of a task being reserved running under ``token`` (inside the
    reserve's transaction), as the executor would; True if it did (``Reservation.started``).
    No record, or one that may not become running, is left to the executor."""
    row = conn.execute(
        f"SELECT status, record, before_start FROM tasks WHERE id = ? AND {_LIVE}", (task_id, now)
    ).fetchone()
    if row is None or TaskStatus.RUNNING not in ALLOWED_TRANSITIONS[TaskStatus(row[0])]:
        return False
    # After a start whose worker was lost, start from the record as it was before that
    # one: attempts count as the executor counts them, and a hand-back restores that.
    before = row[2] or row[1]
    try:
        task = Task.model_validate_json(before)
    except ValidationError:
        return False  # the executor's own write replaces it
    running = task.started(token, datetime.fromtimestamp(now, UTC))
    conn.execute(
        "UPDATE tasks SET status = ?, lease_token = ?, expires_at = NULL, record = ?, "
        "before_start = ? WHERE id = ?",
        (TaskStatus.RUNNING.value, token, running.model_dump_json(), before, task_id),
    )
    return True


def unstart(conn: sqlite3.Connection, task_id: str, token: str) -> None:
    """Undo :func:`start` for a reservation handed back, if nothing wrote the record since."""
    row = conn.execute(
        "SELECT before_start FROM tasks WHERE id = ? AND status = ? AND lease_token = ?",
        (task_id, TaskStatus.RUNNING.value, token),
    ).fetchone()
    if row is None or row[0] is None:
        return
    before = decode(task_id, row[0])
    conn.execute(
        "UPDATE tasks SET status = ?, lease_token = ?, record = ?, before_start = NULL "
        "WHERE id = ?",
        (before.status.value, before.lease_token, row[0], task_id),
    )


def decode(task_id: str, record: str) -> Task:
    try:
        return Task.model_validate_json(record)
    except ValidationError as exc:
        raise DecodeError(f"stored record of task {task_id} cannot be decoded: {exc}") from None


def get(conn: sqlite3.Connection, task_id: str) -> Task | None:
    row = conn.execute(
        f"SELECT record FROM tasks WHERE id = ? AND {_LIVE}", (task_id, time.time())
    ).fetchone()
    return None if row is None else decode(task_id, row[0])


def select(
    conn: sqlite3.Connection,
    status: TaskStatus | None,
    name: str | None,
    queue: str | None,
    limit: int,
    after: str | None,
) -> list[Task]:
    clauses: list[str] = [_LIVE]
    params: list[object] = [time.time()]
    filters = (("status = ?", status), ("name = ?", name), ("queue = ?", queue), ("id > ?", after))
    for clause, value in filters:
        if value is not None:
            clauses.append(clause)
            params.append(value)
    rows = conn.execute(
        f"SELECT id, record FROM tasks WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [decode(task_id, record) for task_id, record in rows]


def counts(conn: sqlite3.Connection) -> dict[TaskStatus, int]:
    result = dict.fromkeys(TaskStatus, 0)
    for status, count in conn.execute(
        f"SELECT status, count(*) FROM tasks WHERE {_LIVE} GROUP BY status", (time.time(),)
    ):
        result[TaskStatus(status)] = count
    return result
