"""Schedules in PostgreSQL: a table beside the task records, ticks fired in one transaction.

A :meth:`PostgresSchedules.fire` batch is one transaction of a few statements: lock the
batch's schedule rows (``FOR UPDATE``, in id order, so concurrent batches never deadlock),
read the statuses of their last tasks where an overlap rule needs them (a statement of its
own, taken after the locks: under READ COMMITTED it sees what a scheduler that held the
lock before us committed), then enqueue the fired tasks with the backend's own enqueue
statement and write the changed state rows. A second scheduler firing the same tick waits
on the row lock, then reads the ``last_tick_ms`` the first one committed: ``ALREADY``.
A scheduler stopped while it holds the locks loses its session after
:data:`HOLD_LIMIT_MS` (``idle_in_transaction_session_timeout``, local to the transaction),
so the others wait at most that long; resumed, it retries on a new connection and finds
the tick fired.

The fire rule (steps 1-6, documented with ``bgcoor_core.ScheduleStore``) is applied in
Python on the locked rows, in request order, so a batch sees its own earlier fires.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import asyncpg

from bgcoor_core import (
    Fire,
    FireOutcome,
    Message,
    Overlap,
    ScheduleDefinition,
    ScheduleEntry,
    ScheduleState,
    Task,
    kit,
)
from bgcoor_core.kit import printable

from . import _checks
from ._database import Conn, Database
from ._sql import LIVE, quote_ident

log = logging.getLogger("bgcoor.postgres")

#: Milliseconds a fire transaction may sit idle (its client stopped) before the server
#: ends the session and frees the schedules it locked; a live client never idles that
#: long between the transaction's few statements.
HOLD_LIMIT_MS = 1000

#: Stores tasks and their messages as one enqueue on the caller's connection (and so in
#: its transaction): the backend's enqueue statement.
Insert = Callable[[Conn, Sequence[Task], Sequence[Message]], Awaitable[None]]

#: The state columns, named as the :class:`ScheduleState` fields they hold.
_STATE = (
    "paused",
    "since_ms",
    "last_tick_ms",
    "last_task_id",
    "buffered_tick_ms",
    "fired",
    "skipped",
    "missed",
)
#: The ones a fire writes (``paused`` and ``since_ms`` are never its business).
_FIRED_STATE = _STATE[2:]


class ScheduleStatements:
    """SQL on one schema's ``schedules`` table (none of it on the task hot path)."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        table, tasks = f"{s}.schedules", f"{s}.tasks"
        state = ", ".join(_STATE)
        self.put = (
            f"INSERT INTO {table} AS s (id, definition) SELECT n.id, n.definition::json "
            "FROM unnest($1::text[], $2::text[]) AS n(id, definition) ORDER BY n.id "
            "ON CONFLICT (id) DO UPDATE SET definition = excluded.definition"
        )
        self.get = f"SELECT id, definition::text AS definition, {state} FROM {table} ORDER BY id"
        self.delete = f"DELETE FROM {table} WHERE id = $1 RETURNING 1"
        self.pause = f"UPDATE {table} SET paused = $2 WHERE id = $1 RETURNING 1"
        # the hold limit is set by the locking statement itself: no round trip of its own
        self.lock = (
            "WITH hold AS MATERIALIZED (SELECT set_config("
            f"'idle_in_transaction_session_timeout', '{HOLD_LIMIT_MS}', true)) "
            f"SELECT id, {state} FROM {table} AS locked, hold WHERE id = ANY($1::text[]) "
            "ORDER BY id FOR UPDATE OF locked"
        )
        # an expired record counts as gone: not active
        self.statuses = (
            f"SELECT t.id, t.status FROM {tasks} t WHERE t.id = ANY($1::text[]) AND {LIVE}"
        )
        # numbers travel as text (see _sql.numbers): no array type look-up per connection
        params = ", ".join(f"${n}::text[]" for n in range(1, len(_FIRED_STATE) + 2))
        assignments = ", ".join(
            f"{name} = u.{name}" if name == "last_task_id" else f"{name} = u.{name}::bigint"
            for name in _FIRED_STATE
        )
        self.save_states = (
            f"UPDATE {table} s SET {assignments} FROM unnest({params}) "
            f"AS u(id, {', '.join(_FIRED_STATE)}) WHERE s.id = u.id"
        )


class PostgresSchedules:
    """The :class:`~bgcoor_core.ScheduleStore` of a :class:`PostgresBackend` (which
    delegates to it): schedules in its schema, fired into its tasks and messages."""

    def __init__(self, db: Database, schema: str, insert: Insert) -> None:
        self._db = db
        self._insert = insert
        self.sql = ScheduleStatements(schema)

    async def put_schedules(self, definitions: Sequence[ScheduleDefinition]) -> None:
        latest = {d.id: d for d in definitions}  # one id twice: the last one wins
        if not latest:
            return
        ids = sorted(latest)
        _checks.text("schedule id", ids)
        bodies = [latest[i].model_dump_json() for i in ids]
        await self._db.run(lambda c: c.execute(self.sql.put, ids, bodies))

    async def get_schedules(self) -> list[ScheduleEntry]:
        rows = await self._db.run(lambda c: c.fetch(self.sql.get))
        return [entry for entry in map(_entry, rows) if entry is not None]

    async def delete_schedule(self, schedule_id: str) -> bool:
        _checks.text("schedule id", [schedule_id])
        found = await self._db.run(lambda c: c.fetchval(self.sql.delete, schedule_id))
        return found is not None

    async def set_schedule_paused(self, schedule_id: str, paused: bool) -> bool:
        _checks.text("schedule id", [schedule_id])
        found = await self._db.run(lambda c: c.fetchval(self.sql.pause, schedule_id, paused))
        return found is not None

    async def fire(self, requests: Sequence[Fire]) -> list[FireOutcome]:
        if not requests:
            return []
        _check_requests(requests)
        return await self._db.run(partial(self._fire, requests=requests))

    async def _fire(self, conn: Conn, requests: Sequence[Fire]) -> list[FireOutcome]:
        ids = sorted({r.schedule_id for r in requests})
        async with conn.transaction():
            # A scheduler frozen (SIGSTOP) while it holds these row locks would stall
            # every other one until it resumed: the server ends such a session after
            # HOLD_LIMIT_MS idle in this transaction, which rolls back and frees the locks
            # (set by the lock statement).
            rows = await conn.fetch(self.sql.lock, ids)
            states = {row["id"]: _state(row) for row in rows}
            before = {sid: state.model_copy() for sid, state in states.items()}
            statuses = await self._statuses(conn, requests, states)
            outcomes = [_apply(states.get(r.schedule_id), r, statuses) for r in requests]
            fired = [r for r, o in zip(requests, outcomes, strict=True) if o is FireOutcome.FIRED]
            if fired:
                await self._insert(conn, _tasks(fired), _messages(fired))
            changed = [sid for sid, state in states.items() if state != before[sid]]
            if changed:
                await conn.execute(self.sql.save_states, *_state_columns(states, changed))
        return outcomes

    async def _statuses(
        self, conn: Conn, requests: Sequence[Fire], states: dict[str, ScheduleState]
    ) -> dict[str, str]:
        """The status of each last task whose schedule has a request that looks at it."""
        wanted = set()
        for request in requests:
            state = states.get(request.schedule_id)
            looks = request.release or request.overlap is not Overlap.ALLOW
            if state is not None and state.last_task_id is not None and looks:
                wanted.add(state.last_task_id)
        if not wanted:
            return {}
        rows = await conn.fetch(self.sql.statuses, sorted(wanted))
        return {row["id"]: row["status"] for row in rows}


# -- the fire rule (see bgcoor_core.ScheduleStore), on the locked rows -----------------


def _apply(state: ScheduleState | None, request: Fire, statuses: dict[str, str]) -> FireOutcome:
    last = None if state is None or state.last_task_id is None else statuses.get(state.last_task_id)
    outcome = kit.apply_fire(state, request, last)
    if outcome is FireOutcome.FIRED and request.task is not None:
        # a later request of this batch sees the new task as it is about to be stored
        statuses[request.task.id] = request.task.status.value
    return outcome


# -- helpers ---------------------------------------------------------------------------


def _check_requests(requests: Sequence[Fire]) -> None:
    _checks.text("schedule id", (r.schedule_id for r in requests))
    for request in requests:
        if (request.task is None) != (request.message is None):
            raise ValueError(
                f"schedule {printable(request.schedule_id, 80)}: a fire carries both its "
                "task and its message, or neither"
            )
        if request.release and request.task is None:
            raise ValueError(
                f"schedule {printable(request.schedule_id, 80)}: a release needs its task"
            )


def _tasks(fired: Sequence[Fire]) -> list[Task]:
    return [r.task for r in fired if r.task is not None]


def _messages(fired: Sequence[Fire]) -> list[Message]:
    return [r.message for r in fired if r.message is not None]


def _state(row: asyncpg.Record) -> ScheduleState:
    return ScheduleState(**{name: row[name] for name in _STATE})


def _state_columns(states: dict[str, ScheduleState], ids: Sequence[str]) -> list[list[Any]]:
    columns: list[list[Any]] = [list(ids)]
    for name in _FIRED_STATE:
        values = (getattr(states[sid], name) for sid in ids)
        columns.append([None if v is None else str(v) for v in values])
    return columns


def _entry(row: asyncpg.Record) -> ScheduleEntry | None:
    """A stored schedule, or ``None`` (logged with its id) when its definition does not
    decode: one bad row must not hide the others from every scheduler."""
    schedule_id = row["id"]
    try:
        definition = ScheduleDefinition.model_validate_json(row["definition"])
    except ValueError as exc:  # pydantic's ValidationError is one
        problem = printable(str(exc), 300)
    else:
        if definition.id == schedule_id:
            return ScheduleEntry(definition, _state(row))
        problem = f"it names another id, {printable(definition.id, 80)!r}"
    log.warning(
        "schedules: skipped schedule %r, its definition cannot be decoded: %s",
        printable(schedule_id, 80),
        problem,
    )
    return None
