"""Workflows in PostgreSQL: a ``workflows`` row per workflow, a ``parked`` row per member
not released yet, every step one transaction under the workflow row's lock.

A member's final outcome (:meth:`PostgresWorkflows.save_member`,
:meth:`~PostgresWorkflows.complete_member`) is one transaction: lock the workflow row
(``FOR UPDATE``, the schedule store's hold limit set by the same statement), store the
record with the storage's own save (or outcome + ack) statement, apply the fan-in rule
(``kit.apply_outcome``) in Python on the locked state, then one statement does what it
asks: write the state back, move released members' parked rows into ``messages`` (ready,
NOTIFY as a push sends it) with their records ``pending``, drop cancelled members' parked
rows and, when the workflow ends, give every member record its TTL. Members of one chord
finishing together from any number of connections queue on that row lock, so each is
counted once and the callback is released exactly once. The lock is taken before the
record is written, in every step (cancelling too), so two steps never wait on each other's
rows in opposite orders.

A cancelled member's record is read (``FOR UPDATE``) and rewritten in Python, a statement
of its own taken only when something is cancelled; a released one needs no read: its
``pending`` record was computed at submission and parked beside its message.

Statements per step: BEGIN, lock, the record's write, the step, COMMIT (+1 read when the
step cancels members). Submission: BEGIN, state + parked rows, the backend's enqueue
statement (every record, the roots' messages), COMMIT.

A workflow state that cannot be decoded (not a ``WorkflowState``, another workflow's, or
lists of unequal lengths) is never guessed at: a member's outcome is still stored (so the
task is not run again, and its result is kept, without expiry), the step is skipped with a
warning naming the workflow, and the row is left as it is for an operator. Nothing is
released or cancelled; :meth:`~PostgresWorkflows.get_workflow` and
:meth:`~PostgresWorkflows.cancel_workflow` raise ``CorruptRecordError`` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bgcoor_core import Message, Reservation, Task, TaskStatus, kit
from bgcoor_core.kit import CorruptRecordError, DuplicateTaskError, WorkflowState, printable

from . import _checks, _records
from ._database import Conn, Database
from ._records import Write
from ._schedules import HOLD_LIMIT_MS
from ._sql import LIVE, SECONDS, Statements, numbers, quote_ident

log = logging.getLogger("bgcoor.postgres")

#: The backend's enqueue statement on the caller's connection (and transaction).
Insert = Callable[[Conn, Sequence[Task], Sequence[Message]], Awaitable[None]]
#: Wakes this process's consumers of these queues (NOTIFY reaches the others).
Wake = Callable[[Iterable[str]], None]

CANCELLED_WHY = "cancelled: its workflow ended"


class WorkflowStatements:
    """SQL on one schema's ``workflows`` and ``parked`` tables (none on the hot path)."""

    def __init__(self, sql: Statements) -> None:
        s = quote_ident(sql.schema)
        wf, parked, t = f"{s}.workflows", f"{s}.parked", f"{s}.tasks"
        m, q = f"{s}.messages", f"{s}.queues"
        self.submit = (
            f"WITH w AS (INSERT INTO {wf} (id, status, state) VALUES ($1, $2, $3::json) "
            "ON CONFLICT (id) DO NOTHING RETURNING id), "
            f"p AS (INSERT INTO {parked} (workflow_id, node, id, queue, priority, body, eta, "
            "record) SELECT w.id, n.node, n.id, n.queue, n.priority, n.body, n.eta::float8, "
            "n.record::json FROM w CROSS JOIN unnest($4::int[], $5::text[], $6::text[], "
            "$7::int[], $8::bytea[], $9::text[], $10::text[]) "
            "AS n(node, id, queue, priority, body, eta, record)) "
            "SELECT count(*) FROM w"
        )
        self.get = f"SELECT state::text FROM {wf} WHERE id = $1"
        # the hold limit is set by the locking statement itself: no round trip of its own
        self.lock = (
            "WITH hold AS MATERIALIZED (SELECT set_config("
            f"'idle_in_transaction_session_timeout', '{HOLD_LIMIT_MS}', true)) "
            f"SELECT state::text FROM {wf} AS locked, hold WHERE id = $1 FOR UPDATE OF locked"
        )
        # the records of members to cancel, as reads show them (see _records.decode)
        self.members = (
            "SELECT t.id, t.record::text, extract(epoch FROM t.started_at)::float8, "
            f"t.lease_token, t.status FROM {t} t WHERE t.id = ANY($1::text[]) AND {LIVE} "
            "ORDER BY t.id FOR UPDATE"
        )
        # $1 id, $2 status, $3 state; $4 released nodes, $5 nodes unparked unreleased; $6-$9 the
        # cancelled records (id, JSON, lease token, ttl); $10-$11 the TTLs of the others
        # (the two sets of rows are disjoint: one statement updates a row once)
        self.step = (
            f"WITH st AS (UPDATE {wf} SET status = $2, state = $3::json WHERE id = $1), "
            f"gone AS (DELETE FROM {parked} p WHERE p.workflow_id = $1 "
            "AND (p.node = ANY($4::int[]) OR p.node = ANY($5::int[])) "
            "RETURNING p.node, p.id, p.queue, p.priority, p.body, p.eta, p.record), "
            "moved AS (SELECT * FROM gone WHERE node = ANY($4::int[])), "
            f"ins AS (INSERT INTO {m} (id, queue, priority, body, available_at) "
            "SELECT id, queue, priority, body, coalesce(to_timestamp(eta), clock_timestamp()) "
            "FROM moved ORDER BY node ON CONFLICT (id) DO NOTHING RETURNING queue), "
            f"named AS (INSERT INTO {q} (name) SELECT DISTINCT queue FROM moved "
            "ON CONFLICT DO NOTHING), "
            f"pending AS (UPDATE {t} t SET status = '{TaskStatus.PENDING.value}', "
            "record = moved.record FROM moved WHERE t.id = moved.id "
            f"AND t.status = '{TaskStatus.WAITING.value}' AND {LIVE}), "
            f"cancelled AS (UPDATE {t} t SET status = '{TaskStatus.CANCELLED.value}', "
            "lease_token = c.token, record = c.record::json, "
            f"expires_at = clock_timestamp() + c.ttl::float8 {SECONDS}, started_at = NULL, "
            "before_status = NULL, before_token = NULL "
            "FROM unnest($6::text[], $7::text[], $8::text[], $9::text[]) "
            "AS c(id, record, token, ttl) WHERE t.id = c.id), "
            f"expiring AS (UPDATE {t} t SET expires_at = clock_timestamp() + e.ttl::float8 "
            f"{SECONDS} FROM unnest($10::text[], $11::text[]) AS e(id, ttl) "
            "WHERE t.id = e.id) "
            f"SELECT d.queue, pg_notify('{sql.channel}', d.queue) "
            "FROM (SELECT DISTINCT queue FROM ins) d"
        )


class PostgresWorkflows:
    """The :class:`~bgcoor_core.WorkflowStore` of a :class:`PostgresBackend` pair."""

    def __init__(self, db: Database, sql: Statements, insert: Insert, wake: Wake) -> None:
        self._db = db
        self._records_sql = sql
        self._insert = insert
        self._wake = wake
        self.sql = WorkflowStatements(sql)

    # -- the store ---------------------------------------------------------------------

    async def submit_workflow(
        self, state: WorkflowState, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        _checks.text("workflow id", [state.id])
        by_id = {m.id: m for m in messages}
        missing = [t.id for t in tasks if t.id not in by_id]
        if missing:
            raise ValueError(f"workflow {state.id}: no message for member {missing[0]}")
        waiting = [t for t in tasks if t.status is TaskStatus.WAITING]
        roots = [by_id[t.id] for t in tasks if t.status is not TaskStatus.WAITING]
        parked_args = _parked_columns(waiting, by_id)
        attempts = 0

        async def operation(conn: Conn) -> None:
            nonlocal attempts
            attempts += 1
            try:
                async with conn.transaction():
                    args = (state.id, state.status.value, state.model_dump_json())
                    if not await conn.fetchval(self.sql.submit, *args, *parked_args):
                        raise DuplicateTaskError(f"workflow {state.id} already exists")
                    await self._insert(conn, tasks, roots)
            except DuplicateTaskError:
                if attempts == 1:
                    raise
                # retried after a lost connection: the first attempt had committed
                log.info("workflow %s: submission retried, found already stored", state.id)

        await self._db.run(operation)
        self._wake(m.queue for m in roots)

    async def save_member(self, task: Task) -> None:
        await self._member_step(task, None)

    async def complete_member(self, reservation: Reservation, task: Task) -> None:
        await self._member_step(task, reservation.token)

    async def cancel_workflow(self, workflow_id: str) -> bool:
        _checks.text("workflow id", [workflow_id])
        queues = await self._db.run(partial(self._cancel, workflow_id=workflow_id))
        if queues is None:
            return False
        self._wake(queues)
        return True

    async def get_workflow(self, workflow_id: str) -> WorkflowState | None:
        _checks.text("workflow id", [workflow_id])
        text = await self._db.run(lambda c: c.fetchval(self.sql.get, workflow_id))
        return None if text is None else decode_state(workflow_id, text)

    # -- inside one transaction ---------------------------------------------------------

    async def _member_step(self, task: Task, token: str | None) -> None:
        write = Write(task, None, token)  # no expiry while its workflow runs
        _checks.text("task id, name, queue or lease token", _text_of(task))
        member = _member(task)
        queues = await self._db.run(partial(self._step, write=write, member=member))
        if queues:
            self._wake(queues)

    async def _step(self, conn: Conn, write: Write, member: tuple[str, int] | None) -> list[str]:
        task = write.task
        async with conn.transaction():
            locked = None
            if member is not None and task.status.is_final:
                # first, as every step: the record is written under the workflow's lock
                locked = await conn.fetchval(self.sql.lock, member[0])
            (verdict,) = await _records.write(
                conn, self._records_sql, [write], complete=write.token is not None
            )
            if verdict is not None:
                raise verdict  # rolled back: nothing changed
            state = None if locked is None or member is None else _usable(member, task, locked)
            if state is None or member is None:
                return []
            effects = kit.apply_outcome(state, member[1], task.status, task.error)
            if effects.duplicate:
                return []
            # a member final before its release (cancelled while waiting) never runs: its
            # parked row goes with the step
            return await self._apply(conn, state, effects, unparked=[member[1]])

    async def _cancel(self, conn: Conn, workflow_id: str) -> list[str] | None:
        async with conn.transaction():
            locked = await conn.fetchval(self.sql.lock, workflow_id)
            if locked is None:
                return None
            state = decode_state(workflow_id, locked)
            if state.status.is_final:
                return None
            return await self._apply(conn, state, kit.cancel_all(state))

    async def _apply(
        self,
        conn: Conn,
        state: WorkflowState,
        effects: kit.Effects,
        unparked: Sequence[int] = (),
    ) -> list[str]:
        """One statement (after a read when members are cancelled) doing ``effects``,
        dropping the parked rows of ``unparked`` too; the queues released members were
        pushed to."""
        cancelled = await self._cancelled(conn, state, effects.cancel)
        by_id = {t.id: t for t in cancelled}
        ttl_of = dict(zip(state.tasks, state.ttls, strict=True))
        expiring = [] if not effects.ended else [i for i in state.tasks if i not in by_id]
        expiring = [i for i in expiring if ttl_of[i] is not None]
        rows = await conn.fetch(
            self.sql.step,
            state.id,
            state.status.value,
            state.model_dump_json(),
            effects.release,
            [*effects.cancel, *unparked],
            list(by_id),
            [t.model_dump_json() for t in cancelled],
            [t.lease_token for t in cancelled],
            numbers(ttl_of[i] if effects.ended else None for i in by_id),
            expiring,
            numbers(ttl_of[i] for i in expiring),
        )
        return [row[0] for row in rows]

    async def _cancelled(self, conn: Conn, state: WorkflowState, keys: list[int]) -> list[Task]:
        """The records of nodes ``keys`` not final yet, as they become: ``cancelled``."""
        if not keys:
            return []
        rows = await conn.fetch(self.sql.members, [state.tasks[k] for k in keys])
        now = datetime.now(UTC)
        cancelled = []
        for row in rows:
            try:
                task = _records.decode(*row)
            except CorruptRecordError as exc:
                log.warning("workflow %s: member left as it is: %s", state.id, exc)
                continue
            if task.status.is_final:
                continue
            task.status = TaskStatus.CANCELLED
            task.finished_at = now
            task.error = task.error or CANCELLED_WHY
            cancelled.append(task)
        return cancelled


# -- helpers ---------------------------------------------------------------------------


def decode_state(workflow_id: str, text: str) -> WorkflowState:
    """A stored state, or ``CorruptRecordError`` naming the workflow and the problem."""
    try:
        state = WorkflowState.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError is one
        problem = f"its state cannot be decoded: {printable(str(exc), 300)}"
    else:
        lengths = {len(state.graph.nodes), len(state.tasks), len(state.remaining)}
        lengths |= {len(state.done), len(state.ttls)}
        if state.id != workflow_id:
            problem = f"it holds the state of workflow {printable(state.id, 60)!r}"
        elif len(lengths) != 1:
            problem = "its lists of nodes, tasks, counts, outcomes and TTLs differ in length"
        else:
            return state
    raise CorruptRecordError(f"corrupt workflow {printable(workflow_id, 60)}: {problem}")


def _usable(member: tuple[str, int], task: Task, locked: str) -> WorkflowState | None:
    """The locked state if it can be stepped for this member, else ``None`` (logged)."""
    workflow_id, key = member
    try:
        state = decode_state(workflow_id, locked)
    except CorruptRecordError as exc:
        log.warning("task %s: outcome stored, its workflow not stepped: %s", task.id, exc)
        return None
    if not 0 <= key < len(state.tasks) or state.tasks[key] != task.id:
        log.warning(
            "task %s: outcome stored, its workflow %s not stepped: node %s is not this task",
            task.id,
            printable(workflow_id, 60),
            key,
        )
        return None
    return state


def _member(task: Task) -> tuple[str, int] | None:
    try:
        return kit.member_of(task)
    except ValueError:  # a node header that is not a number: not a member we can count
        log.warning("task %s: its workflow node header is not a number", task.id)
        return None


def _text_of(task: Task) -> tuple[str | None, ...]:
    return task.id, task.name, task.queue, task.lease_token


def _parked_columns(waiting: Sequence[Task], by_id: dict[str, Message]) -> list[list[Any]]:
    """The ``parked`` rows of members not released yet: message and released record."""
    messages = [by_id[t.id] for t in waiting]
    for message in messages:
        kit.validate_queue_name(message.queue)
        _checks.eta(message.id, message.eta)
    _checks.text("task id", (m.id for m in messages))
    return [
        [int(t.headers[kit.NODE_HEADER]) for t in waiting],
        [m.id for m in messages],
        [m.queue for m in messages],
        [m.priority for m in messages],
        [m.body for m in messages],
        numbers(m.eta for m in messages),
        [t.model_copy(update={"status": TaskStatus.PENDING}).model_dump_json() for t in waiting],
    ]
