"""Schedules in the ``schedules`` table; a batch of ticks fires in one write transaction.

``BEGIN IMMEDIATE`` takes the file's write lock before the first read, so reading the
ledger and the last task's status, storing the new record and message and moving the
ledger on is one step for every process that shares the file (see
:mod:`bgcoor_core._schedules` for the rule each request follows).

Every scheduler sends each tick, and only one fires it. The others are answered from a read
of the committed ledger (WAL: a read takes no lock) without taking the write lock: a process
holding that lock holds back every writer of the file while it is stopped (SIGSTOP, a long
pause), so the fewer passes take it, the fewer stops can land there. While the lock is
taken, a fire asks for it again every few milliseconds (not through SQLite's busy handler,
which would queue it for the lock however the ledger moves) and reads the ledger first each
time; it gives up after the connection's busy timeout, as a lock wait would.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from ..._broker import Message
from ..._codec import printable
from ..._schedules import (
    Fire,
    FireOutcome,
    ScheduleDefinition,
    ScheduleEntry,
    ScheduleState,
    apply_fire,
)
from ..._task import Task
from ._connection import transaction
from ._defects import decode_text, shown

log = logging.getLogger("bgcoor.sqlite")

#: Outcomes a read of the committed ledger decides: each leaves the ledger as it is, and
#: :func:`~bgcoor_core._schedules.apply_fire` reaches it before it looks at the last task.
_SETTLED = frozenset({FireOutcome.ALREADY, FireOutcome.PAUSED, FireOutcome.REMOVED})
#: Seconds between attempts at the write lock while another process holds it (doubling).
_RETRY_FIRST = 0.001
_RETRY_MAX = 0.02

#: Stores a task's record and message inside the caller's transaction (the enqueue's own).
Enqueue = Callable[[sqlite3.Connection, Sequence[Task], Sequence[Message]], None]

_UPSERT = (
    "INSERT INTO schedules (id, definition, since_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET definition = excluded.definition"
)
_LIST = (
    "SELECT CAST(id AS BLOB), CAST(definition AS BLOB), paused, since_ms, last_tick_ms, "
    "CAST(last_task_id AS BLOB), buffered_tick_ms, fired, skipped, missed "
    "FROM schedules ORDER BY id"
)
# The ledger and the last task's status in one read; a record that expired is gone.
_READ = (
    "SELECT paused, last_tick_ms, buffered_tick_ms, fired, skipped, missed, "
    "(SELECT CAST(tasks.status AS BLOB) FROM tasks WHERE tasks.id = schedules.last_task_id "
    "AND (tasks.expires_at IS NULL OR tasks.expires_at > ?)) "
    "FROM schedules WHERE id = ?"
)


def put(conn: sqlite3.Connection, definitions: Sequence[ScheduleDefinition]) -> None:
    now_ms = round(time.time() * 1000)
    with transaction(conn):
        conn.executemany(_UPSERT, [(d.id, d.model_dump_json(), now_ms) for d in definitions])


def get_all(conn: sqlite3.Connection) -> list[ScheduleEntry]:
    """Every entry by id; a row that cannot be decoded is skipped with a warning."""
    entries = (_entry(row) for row in conn.execute(_LIST).fetchall())
    return [entry for entry in entries if entry is not None]


def _entry(row: tuple[Any, ...]) -> ScheduleEntry | None:
    """One row of :data:`_LIST` as an entry, or ``None`` (logged) if it cannot be read."""
    raw_id, raw_definition, paused, since_ms, last_tick_ms, raw_task_id, *rest = row
    buffered_tick_ms, fired, skipped, missed = rest
    try:
        definition = ScheduleDefinition.model_validate_json(raw_definition or b"")
        state = ScheduleState.model_validate(
            {
                "paused": paused,
                "since_ms": since_ms,
                "last_tick_ms": last_tick_ms,
                "last_task_id": _text(raw_task_id, "last_task_id"),
                "buffered_tick_ms": buffered_tick_ms,
                "fired": fired,
                "skipped": skipped,
                "missed": missed,
            }
        )
    except (ValidationError, ValueError) as exc:
        log.warning("schedule %s: skipped, its row cannot be read: %s", shown(raw_id), _why(exc))
        return None
    if decode_text(raw_id) != definition.id:
        log.warning(
            "schedule %s: skipped, its definition names schedule %s",
            shown(raw_id),
            printable(definition.id, 80),
        )
        return None
    return ScheduleEntry(definition, state)


def _text(raw: bytes | None, column: str) -> str | None:
    if raw is None:
        return None
    text = decode_text(raw)
    if text is None:
        raise ValueError(f"column {column} holds {shown(raw)}, which is not UTF-8")
    return text


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)[:3]
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return printable(problems, 300)
    return printable(str(exc), 300)


def delete(conn: sqlite3.Connection, schedule_id: str) -> bool:
    with transaction(conn):
        return conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount > 0


def set_paused(conn: sqlite3.Connection, schedule_id: str, paused: bool) -> bool:
    sql = "UPDATE schedules SET paused = ? WHERE id = ?"
    with transaction(conn):
        return conn.execute(sql, (int(paused), schedule_id)).rowcount > 0


def fire(conn: sqlite3.Connection, requests: Sequence[Fire], enqueue: Enqueue) -> list[FireOutcome]:
    """Apply each request in order, all in one transaction: an error (a task id that is
    taken) rolls the whole batch back. A batch the committed ledger already decides (module
    docstring) is answered without the write lock."""
    settled = _lock_or_settle(conn, requests)
    if settled is not None:
        return settled
    try:
        outcomes = [_fire_one(conn, request, enqueue) for request in requests]
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return outcomes


def _lock_or_settle(conn: sqlite3.Connection, requests: Sequence[Fire]) -> list[FireOutcome] | None:
    """Take the write lock (``None``), unless a read of the ledger, made before each attempt,
    decides the batch first (its outcomes). Gives up after the busy timeout."""
    give_up = time.monotonic() + _busy_timeout(conn)
    delay = _RETRY_FIRST
    while (settled := _settled(conn, requests)) is None:
        if _try_begin(conn):
            return None
        if time.monotonic() >= give_up:
            raise sqlite3.OperationalError("database is locked")
        time.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX)
    return settled


def _settled(conn: sqlite3.Connection, requests: Sequence[Fire]) -> list[FireOutcome] | None:
    """Each request's outcome if the committed ledger decides them all without a change
    (one read transaction, no write lock); ``None`` as soon as one may change it."""
    outcomes: list[FireOutcome] = []
    conn.execute("BEGIN DEFERRED")  # one snapshot for the whole batch
    try:
        for request in requests:
            row = conn.execute(_READ, (time.time(), request.schedule_id)).fetchone()
            state = None if row is None else _state(row)
            outcome = apply_fire(state, request, None)  # ``last`` is not reached: _SETTLED
            if outcome not in _SETTLED:
                return None
            outcomes.append(outcome)
    finally:
        conn.execute("COMMIT")
    return outcomes


def _try_begin(conn: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` if the write lock is free now; ``False`` if it is taken."""
    timeout_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            return False
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    return True


def _busy_timeout(conn: sqlite3.Connection) -> float:
    milliseconds: int = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    return milliseconds / 1000


def _state(row: tuple[Any, ...]) -> ScheduleState:
    """The ledger in a row of :data:`_READ` (its last column, the last task's status, aside)."""
    paused, last_tick_ms, buffered_tick_ms, fired, skipped, missed, _ = row
    return ScheduleState(
        paused=bool(paused),
        last_tick_ms=last_tick_ms,
        buffered_tick_ms=buffered_tick_ms,
        fired=fired,
        skipped=skipped,
        missed=missed,
    )


def _fire_one(conn: sqlite3.Connection, request: Fire, enqueue: Enqueue) -> FireOutcome:
    row = conn.execute(_READ, (time.time(), request.schedule_id)).fetchone()
    if row is None:
        return FireOutcome.REMOVED
    before, status = _state(row), row[-1]
    state = before.model_copy()
    # read as bytes, so a damaged status is simply not active
    last = status.decode("utf-8", "replace") if isinstance(status, bytes) else None
    outcome = apply_fire(state, request, last)
    if outcome is FireOutcome.FIRED:
        assert request.task is not None
        assert request.message is not None
        enqueue(conn, [request.task], [request.message])
    change = {
        column: value
        for column, value in state.model_dump().items()
        if value != getattr(before, column)
    }
    if change:
        assignments = ", ".join(f"{column} = ?" for column in change)
        conn.execute(
            f"UPDATE schedules SET {assignments} WHERE id = ?",
            (*change.values(), request.schedule_id),
        )
    return outcome
