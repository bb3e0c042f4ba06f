"""Task records in the ``tasks`` table (always JSON, whatever the message serializer).

A record written by something else (an unknown status, text that is not UTF-8, JSON that
is no task) never fails more than its own task: the reserve hands it over as a defect,
``get`` raises :class:`CorruptRecordError`, ``list`` skips it, ``counts`` ignores it, and
``save`` may overwrite it with a ``dead`` record (``FROM_UNKNOWN_STATUS``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from ..._broker import Message, record_jsons
from ..._codec import printable
from ..._errors import BgcoorError, CorruptRecordError, DuplicateTaskError
from ..._storage import check_transition
from ..._task import ALLOWED_TRANSITIONS, Task, TaskStatus
from ._connection import transaction
from ._defects import decode_text, describe, shown

log = logging.getLogger("bgcoor.sqlite")

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
#: The name on a placeholder that replaces a record nobody can read.
CORRUPT_NAME = "bgcoor.corrupt"
#: The transition rules by stored value: ``.get`` of anything else is ``None`` (unknown).
_ALLOWED: dict[object, frozenset[TaskStatus]] = {
    status.value: allowed for status, allowed in ALLOWED_TRANSITIONS.items()
}
_KNOWN = ", ".join(f"'{status.value}'" for status in TaskStatus)


def _where(task_id: str) -> str:
    return f"task {printable(task_id, 80)} in SQLite table tasks"


def unreadable(conn: sqlite3.Connection, task_id: str, columns: Sequence[str]) -> str:
    """Why a record's text columns could not be fetched: the first that is not UTF-8."""
    raw = conn.execute(
        f"SELECT {', '.join(f'typeof({c}), CAST({c} AS BLOB)' for c in columns)} "
        "FROM tasks WHERE id = ?",
        (task_id,),
    ).fetchone()
    for i, column in enumerate(columns):
        kind, value = (raw[2 * i], raw[2 * i + 1]) if raw else ("null", None)
        if kind == "text" and decode_text(value) is None:
            held = describe(kind, value)
            return f"corrupt record of {_where(task_id)}: column {column} holds {held}"
    return f"corrupt record of {_where(task_id)}: its columns {', '.join(columns)} cannot be read"


def _unknown_status(task_id: str, status: object) -> CorruptRecordError:
    value = printable(repr(status), 60)
    return CorruptRecordError(
        f"corrupt record of {_where(task_id)}: column status holds {value}, which is no task status"
    )


def _old_status(
    conn: sqlite3.Connection, task_id: str, now: float
) -> tuple[str, str | None] | None:
    """The stored status and lease token, as text whatever was written there (what
    :func:`check_transition` needs: a status that is not text naming one may only become
    ``dead``)."""
    sql = f"SELECT status, lease_token FROM tasks WHERE id = ? AND {_LIVE}"
    try:
        row = conn.execute(sql, (task_id, now)).fetchone()
    except sqlite3.OperationalError:  # not UTF-8: read the bytes instead
        columns = "typeof(status), CAST(status AS BLOB), CAST(lease_token AS BLOB)"
        raw = conn.execute(sql.replace("status, lease_token", columns), (task_id, now)).fetchone()
        if raw is None:
            return None
        kind, status, token = raw
        text = decode_text(status) if kind == "text" else None
        return (text or printable(repr(status), 60)), None if token is None else shown(token)
    if row is None:
        return None
    status, token = row
    return (status if isinstance(status, str) else printable(repr(status), 60)), token


def write(conn: sqlite3.Connection, task: Task, ttl: float | None) -> None:
    """Check the transition against the stored record and upsert (inside a transaction)."""
    now = time.time()
    old = _old_status(conn, task.id, now)
    if old is not None:
        check_transition(task.id, old[0], old[1], task.status, task.lease_token)
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


# An expired record counts as gone and is replaced; any live one leaves the row unchanged,
# which the row count shows, and the whole batch is refused.
_INSERT_NEW = (
    "INSERT INTO tasks (id, name, queue, status, lease_token, expires_at, record) "
    "VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
    "queue = excluded.queue, status = excluded.status, lease_token = excluded.lease_token, "
    "expires_at = NULL, record = excluded.record, before_start = NULL "
    "WHERE tasks.expires_at <= ?"
)


def insert_new(
    conn: sqlite3.Connection, tasks: Sequence[Task], messages: Sequence[Message] = ()
) -> None:
    """Store new records (inside a transaction); an id that already has a record, in any
    status, raises :class:`DuplicateTaskError` and the caller's transaction rolls back.
    ``messages``: those made from the tasks, in order, whose record text is reused."""
    now = time.time()
    rows = [
        (t.id, t.name, t.queue, t.status.value, t.lease_token, text, now)
        for t, text in zip(tasks, record_jsons(tasks, messages), strict=True)
    ]
    if conn.executemany(_INSERT_NEW, rows).rowcount != len(rows):
        raise _duplicate_record(conn, rows)


def _duplicate_record(
    conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]
) -> DuplicateTaskError:
    """Which id of a refused batch already had a record: the first whose stored record
    is not the one just offered (or that appears twice in the batch)."""
    seen: set[object] = set()
    for task_id, *_, record, _now in rows:
        if task_id in seen:
            return DuplicateTaskError(f"task {task_id} appears twice in one batch")
        seen.add(task_id)
        stored = conn.execute(
            "SELECT CAST(status AS BLOB), CAST(record AS BLOB) FROM tasks WHERE id = ?",
            (task_id,),
        ).fetchone()
        if stored is not None and stored[1] != str(record).encode():
            return DuplicateTaskError(
                f"task {task_id} already has a record ({shown(stored[0])}): "
                "a new task cannot reuse its id"
            )
    return DuplicateTaskError("a task in this batch already has a record")


def save(conn: sqlite3.Connection, task: Task, ttl: float | None) -> None:
    with transaction(conn):
        write(conn, task, ttl)


def save_many(conn: sqlite3.Connection, tasks: Sequence[Task]) -> None:
    with transaction(conn):
        insert_new(conn, tasks)


def start(conn: sqlite3.Connection, task_id: str, token: str, now: float) -> datetime | None:
    """Mark the record of a task being reserved running under ``token`` (inside the
    reserve's transaction), as the executor would; the start time it stored if it did
    (``Reservation.started``, ``started_at``), else ``None``.
    No record, or one that may not become running, is left to the executor; a record
    that cannot be read raises :class:`CorruptRecordError` (the reserve's defect)."""
    sql = f"SELECT status, record, before_start FROM tasks WHERE id = ? AND {_LIVE}"
    try:
        row = conn.execute(sql, (task_id, now)).fetchone()
    except sqlite3.OperationalError:
        raise CorruptRecordError(
            unreadable(conn, task_id, ("status", "record", "before_start"))
        ) from None
    if row is None:
        return None
    allowed = _ALLOWED.get(row[0])
    if allowed is None:
        raise _unknown_status(task_id, row[0])
    if TaskStatus.RUNNING not in allowed:
        return None
    # After a start whose worker was lost, start from the record as it was before that
    # one: attempts count as the executor counts them, and a hand-back restores that.
    before = row[2] or row[1]
    try:
        task = Task.model_validate_json(before)
    except ValidationError:
        return None  # the executor's own write replaces it
    at = datetime.fromtimestamp(now, UTC)
    running = task.started(token, at)
    conn.execute(
        "UPDATE tasks SET status = ?, lease_token = ?, expires_at = NULL, record = ?, "
        "before_start = ? WHERE id = ?",
        (TaskStatus.RUNNING.value, token, running.model_dump_json(), before, task_id),
    )
    return at


def mark_dead(conn: sqlite3.Connection, task_id: str, queue: str, reason: str) -> None:
    """Overwrite the record of a task whose message was found damaged as ``dead`` with
    ``reason`` (inside a transaction), as the executor does for a defect. No record, or
    one already final, is left as it is; one that cannot be read is replaced."""
    try:
        stored = get(conn, task_id)
    except CorruptRecordError:
        stored = Task.model_construct(id=task_id, name=CORRUPT_NAME, queue=queue)
    if stored is None or stored.status.is_final:
        return
    dead = stored.model_copy(
        update={
            "status": TaskStatus.DEAD,
            "error": reason,
            "finished_at": datetime.now(UTC),
            "lease_token": None,
        }
    )
    try:
        write(conn, dead, None)
    except BgcoorError as exc:  # settled meanwhile: the message is dead-lettered either way
        log.warning("task %s: record not marked dead: %s", task_id, exc)


def unstart(conn: sqlite3.Connection, task_id: str, token: str) -> None:
    """Undo :func:`start` for a reservation handed back, if nothing wrote the record since."""
    try:
        row = conn.execute(
            "SELECT before_start FROM tasks WHERE id = ? AND status = ? AND lease_token = ?",
            (task_id, TaskStatus.RUNNING.value, token),
        ).fetchone()
        if row is None or row[0] is None:
            return
        before = decode(task_id, row[0])
    except (sqlite3.OperationalError, CorruptRecordError) as exc:
        log.warning(
            "task %s: record left running, its earlier state is unreadable: %s", task_id, exc
        )
        return
    conn.execute(
        "UPDATE tasks SET status = ?, lease_token = ?, record = ?, before_start = NULL "
        "WHERE id = ?",
        (before.status.value, before.lease_token, row[0], task_id),
    )


def decode(task_id: str, record: str | bytes, status: object = None) -> Task:
    """The record as a task; ``status`` (the column, when read) must agree with it."""
    try:
        task = Task.model_validate_json(record)
    except ValidationError as exc:
        problem = printable("; ".join(e["msg"] for e in exc.errors(include_url=False)[:3]), 300)
        raise CorruptRecordError(
            f"corrupt record of {_where(task_id)}: column record is no task: {problem}"
        ) from None
    if status is not None and status != task.status.value:
        if _ALLOWED.get(status) is None:
            raise _unknown_status(task_id, status)
        raise CorruptRecordError(
            f"corrupt record of {_where(task_id)}: column status says {status}, "
            f"the record says {task.status.value}"
        )
    return task


def get(conn: sqlite3.Connection, task_id: str) -> Task | None:
    sql = f"SELECT status, record FROM tasks WHERE id = ? AND {_LIVE}"
    try:
        row = conn.execute(sql, (task_id, time.time())).fetchone()
    except sqlite3.OperationalError:
        raise CorruptRecordError(unreadable(conn, task_id, ("status", "record"))) from None
    return None if row is None else decode(task_id, row[1], row[0])


def select(
    conn: sqlite3.Connection,
    status: TaskStatus | None,
    name: str | None,
    queue: str | None,
    limit: int,
    after: str | None,
) -> list[Task]:
    """A page of records by id; one that cannot be decoded is skipped with a warning and
    the page filled from the rows after it. Ids are compared as bytes, so a cursor may be
    an id that is not UTF-8."""
    clauses: list[str] = [_LIVE, "id > CAST(? AS TEXT)"]
    filters = (("status = ?", status), ("name = ?", name), ("queue = ?", queue))
    params: list[object] = [value for clause, value in filters if value is not None]
    clauses += [clause for clause, value in filters if value is not None]
    sql = (
        "SELECT CAST(id AS BLOB), CAST(status AS BLOB), CAST(record AS BLOB) FROM tasks "
        f"WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
    )
    tasks: list[Task] = []
    cursor: str | bytes = "" if after is None else after
    while len(tasks) < limit:
        wanted = limit - len(tasks)
        rows = conn.execute(sql, (time.time(), cursor, *params, wanted)).fetchall()
        tasks += filter(None, (_listed(*row) for row in rows))
        if len(rows) < wanted:
            break
        cursor = rows[-1][0]
    return tasks


def _listed(raw_id: bytes, raw_status: bytes, record: bytes) -> Task | None:
    task_id = decode_text(raw_id)
    try:
        if task_id is None:
            raise CorruptRecordError(f"its id {shown(raw_id)} is not UTF-8")
        return decode(task_id, record, decode_text(raw_status) or shown(raw_status))
    except CorruptRecordError as exc:
        log.warning("task %s: record skipped while listing: %s", shown(raw_id), exc)
        return None


def counts(conn: sqlite3.Connection) -> dict[TaskStatus, int]:
    """Records by status; one whose status is unknown is not counted."""
    result = dict.fromkeys(TaskStatus, 0)
    for status, count in conn.execute(
        f"SELECT status, count(*) FROM tasks WHERE {_LIVE} AND status IN ({_KNOWN}) "
        "GROUP BY status",
        (time.time(),),
    ):
        result[TaskStatus(status)] = count
    return result
