"""Workflows in PostgreSQL: a ``workflows`` row per workflow, a ``workflow_nodes`` row per
member (parents remaining, final status), a ``parked`` row per member not released yet;
every step one transaction under the workflow row's lock.

A member's final outcome (:meth:`PostgresWorkflows.save_member`,
:meth:`~PostgresWorkflows.complete_member`) is one transaction: lock the workflow row
(``FOR UPDATE``, the schedule store's hold limit set by the same statement) and, in the
same statement, the node rows the step needs (see :mod:`bgcoor_postgres._workflow_rows`);
store the record with the storage's own save (or outcome + ack) statement; apply the
fan-in rule (``kit.apply_outcome``) in Python on a :class:`kit.Progress` view of those
rows; then one statement does what it asks: write back the workflow row's scalars and the
node rows that changed, move released members' parked rows into ``messages`` (ready,
NOTIFY as a push sends it) with their records ``pending``, rewrite cancelled members'
records and, when the workflow ends, give every member record its TTL and the workflow row
its expiry. A chord member's step so reads and writes two node rows (its own and the
callback's), whatever the chord's width. Members of one chord finishing together from any
number of connections queue on the workflow row's lock, so each is counted once and the
callback is released exactly once. The lock is taken before the record is written, in
every step (cancelling too), so two steps never wait on each other's rows in opposite
orders.

Cancelled (or restored) members' records are read (``FOR UPDATE``) and rewritten in
Python, a statement of its own taken only when the step has some; a released one needs no
read: its ``pending`` record was computed at submission and parked beside its message. A
failed workflow keeps the parked rows of the members it dropped (a requeue from the dead
letters may restore them, :meth:`~PostgresWorkflows.reopen_member`); any other end drops
them. An ended workflow's row is kept for its longest member TTL (``kit.expiry``), then
deleted with its node and parked rows by :meth:`~PostgresWorkflows.delete_expired` (the
backend's sweep of expired records), read as absent until then.

Statements per step: BEGIN, lock, the record's write, the step, COMMIT (+1 read when the
step cancels or restores members). A duplicate outcome (a redelivery) has no step; one of a
member whose workflow had ended (requeued from the dead letters, the requeue not reopening
it) instead gives the record its TTL, which the end gave every member. Submission: BEGIN,
the workflow, node and parked rows, the backend's enqueue statement (every record, the
roots' messages), COMMIT.

A workflow whose rows cannot be decoded (its state is not a workflow's, or another
workflow's, or its node rows do not fit its graph) is never guessed at: a member's outcome
is still stored (so the task is not run again, and its result is kept, without expiry),
the step is skipped with a warning naming the workflow, and the rows are left as they are
for an operator. Nothing is released or cancelled;
:meth:`~PostgresWorkflows.get_workflow` and :meth:`~PostgresWorkflows.cancel_workflow`
raise ``CorruptRecordError`` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bgcoor_core import Message, Reservation, Task, TaskStatus, kit
from bgcoor_core.kit import CorruptRecordError, DuplicateTaskError, WorkflowState, WorkflowStatus

from . import _checks, _records
from ._database import Conn, Database
from ._records import Write
from ._sql import Statements, numbers
from ._workflow_rows import (
    Locked,
    Parsed,
    Submitted,
    Unloaded,
    View,
    corrupt,
    needed,
    submitted_json,
)
from ._workflow_sql import CLEAR, KEEP, SET, WorkflowStatements

log = logging.getLogger("bgcoor.postgres")

#: The backend's enqueue statement on the caller's connection (and transaction).
Insert = Callable[[Conn, Sequence[Task], Sequence[Message]], Awaitable[None]]
#: Wakes this process's consumers of these queues (NOTIFY reaches the others).
Wake = Callable[[Iterable[str]], None]
#: What a step asks of the rule, on a view.
Rule = Callable[[View], "kit.Effects | None"]
#: A parsed state this process has (its digest, the state), if any.
Known = tuple[str, Submitted] | None

CANCELLED_WHY = "cancelled: its workflow ended"


class PostgresWorkflows:
    """The :class:`~bgcoor_core.WorkflowStore` of a :class:`PostgresBackend` pair."""

    def __init__(self, db: Database, sql: Statements, insert: Insert, wake: Wake) -> None:
        self._db = db
        self._records_sql = sql
        self._insert = insert
        self._wake = wake
        self.sql = WorkflowStatements(sql)
        self.parsed = Parsed()

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
        text, digest = submitted_json(state)
        args = (
            state.id,
            state.status.value,
            text,
            digest,
            state.left,
            list(range(len(state.graph.nodes))),
            list(state.remaining),
            [None if d is None else d.value for d in state.done],
            *_parked_columns(waiting, by_id),
        )
        attempts = 0

        async def operation(conn: Conn) -> None:
            nonlocal attempts
            attempts += 1
            try:
                async with conn.transaction():
                    if not await self._stored(conn, args):
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

    async def reopen_member(self, task: Task) -> None:
        _checks.text("task id, name, queue or lease token", _text_of(task))
        member = _member(task)
        queues = await self._db.run(partial(self._reopen, task=task, member=member))
        if queues:
            self._wake(queues)

    async def cancel_workflow(self, workflow_id: str) -> bool:
        _checks.text("workflow id", [workflow_id])
        queues = await self._db.run(partial(self._cancel, workflow_id=workflow_id))
        if queues is None:
            return False
        self._wake(queues)
        return True

    async def get_workflow(self, workflow_id: str) -> WorkflowState | None:
        _checks.text("workflow id", [workflow_id])
        known = self.parsed.peek(workflow_id)
        digest = None if known is None else known[0]
        row = await self._db.run(lambda c: c.fetchrow(self.sql.get, workflow_id, digest))
        if row is None:
            return None
        view = self._view(workflow_id, known, Locked.of(row))
        if not view.complete:
            raise corrupt(workflow_id, "it lacks node rows of its graph")
        return view.state()

    async def delete_expired(self) -> int:
        """Delete ended workflows kept past their expiry (with their node and parked
        rows), in chunks of 1,000; how many."""
        deleted = 0
        while True:
            chunk = await self._db.run(lambda c: c.execute(self.sql.delete_expired, 1000))
            count = int(chunk.split()[-1])
            deleted += count
            if count < 1000:
                return deleted

    # -- inside one transaction ---------------------------------------------------------

    async def _stored(self, conn: Conn, args: Sequence[Any]) -> bool:
        """The workflow's rows inserted; False if its id is taken (by a row not expired)."""
        if await conn.fetchval(self.sql.submit, *args):
            return True
        if await conn.fetchval(self.sql.drop_expired_one, args[0]):
            return bool(await conn.fetchval(self.sql.submit, *args))
        return False

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
            locked = known = None
            if member is not None and task.status.is_final:
                # first, as every step: the record is written under the workflow's lock
                known = self.parsed.peek(member[0])
                keys, every, fails = _needs(known, member[1], task.status)
                locked = await self._lock(conn, member[0], known, keys, every, fails)
            (verdict,) = await _records.write(
                conn, self._records_sql, [write], complete=write.token is not None
            )
            if verdict is not None:
                raise verdict  # rolled back: nothing changed
            if locked is None or member is None:
                return []
            key = member[1]

            def rule(view: View) -> kit.Effects:
                return kit.apply_outcome(view, key, task.status, task.error)

            stepped = await self._stepped(conn, member, task, known, locked, rule)
            if stepped is None:
                return []
            view, effects = stepped
            if effects.duplicate:
                ttl = view.submitted.ttls[key]
                if view.left == 0 and ttl is not None:
                    # run again on its own after its workflow ended (a requeue it did not
                    # reopen): kept for its TTL, as the end gave every member (rare: one
                    # statement more, in this case only)
                    await conn.execute(self.sql.expire_member, task.id, float(ttl))
                return []
            # a member final before its release (cancelled while waiting) never runs: its
            # parked row goes with the step
            return await self._apply(conn, view, effects, unparked=[key])

    async def _reopen(self, conn: Conn, task: Task, member: tuple[str, int] | None) -> list[str]:
        async with conn.transaction():
            locked = known = None
            if member is not None:
                known = self.parsed.peek(member[0])
                locked = await self._lock(conn, member[0], known, [], True)
            (verdict,) = await _records.write(
                conn, self._records_sql, [Write(task, None)], complete=False
            )
            if verdict is not None:
                raise verdict
            if locked is None or member is None:
                return []  # no workflow (any more): the member runs on its own
            key = member[1]
            stepped = await self._stepped(
                conn, member, task, known, locked, lambda view: kit.reopen(view, key)
            )
            if stepped is None:
                return []
            return await self._apply(conn, *stepped, reopening=True)

    async def _cancel(self, conn: Conn, workflow_id: str) -> list[str] | None:
        async with conn.transaction():
            known = self.parsed.peek(workflow_id)
            locked = await self._lock(conn, workflow_id, known, [], True)
            if locked is None:
                return None
            view = self._view(workflow_id, known, locked)
            if view.status.is_final:
                return None
            view, effects = await self._ruled(conn, view, locked, kit.cancel_all)
            assert effects is not None
            return await self._apply(conn, view, effects)

    async def _lock(
        self,
        conn: Conn,
        workflow_id: str,
        known: Known,
        keys: list[int],
        every: bool,
        fails: bool = False,
    ) -> Locked | None:
        digest = None if known is None else known[0]
        row = await conn.fetchrow(self.sql.lock, workflow_id, digest, keys, every, fails)
        return None if row is None else Locked.of(row)

    async def _stepped(
        self,
        conn: Conn,
        member: tuple[str, int],
        task: Task,
        known: Known,
        locked: Locked,
        rule: Rule,
    ) -> tuple[View, kit.Effects] | None:
        """The rule applied to the member's workflow, or ``None`` (nothing to do, or rows
        that cannot be stepped: logged, the member's outcome kept)."""
        workflow_id, key = member
        try:
            view = self._view(workflow_id, known, locked)
            tasks = view.submitted.tasks
            if not 0 <= key < len(tasks) or tasks[key] != task.id:
                log.warning(
                    "task %s: outcome stored, its workflow %s not stepped: node %s is not "
                    "this task",
                    task.id,
                    kit.printable(workflow_id, 60),
                    key,
                )
                return None
            view, effects = await self._ruled(conn, view, locked, rule)
        except CorruptRecordError as exc:
            log.warning("task %s: outcome stored, its workflow not stepped: %s", task.id, exc)
            return None
        return None if effects is None else (view, effects)

    async def _ruled(
        self, conn: Conn, view: View, locked: Locked, rule: Rule
    ) -> tuple[View, kit.Effects | None]:
        """``rule`` on ``view``; if it needs a node the lock did not load, on every node
        row (read again: the lock is held, so they are current)."""
        try:
            effects = rule(view)
            if effects is None or not effects.ended or view.complete:
                return view, effects
        except Unloaded as exc:  # (an end needs them all: the lock's count was off)
            if view.complete:
                raise corrupt(view.id, f"its graph refers to node {exc}, not in it") from None
        row = await conn.fetchrow(self.sql.nodes, view.id)
        nodes, remaining, done = (None, None, None) if row is None else row
        locked.nodes, locked.remaining, locked.done = nodes or [], remaining or [], done or []
        view = View.of(view.id, view.submitted, locked)
        if not view.complete:
            raise corrupt(view.id, "it lacks node rows of its graph")
        try:
            return view, rule(view)
        except Unloaded as exc:
            raise corrupt(view.id, f"its graph refers to node {exc}, not in it") from None

    def _view(self, workflow_id: str, known: Known, locked: Locked) -> View:
        if locked.state is not None:
            submitted = self.parsed.parse(workflow_id, locked.digest, locked.state)
        else:
            assert known is not None  # the row's digest matched the one sent
            submitted = known[1]
        return View.of(workflow_id, submitted, locked)

    async def _apply(
        self,
        conn: Conn,
        view: View,
        effects: kit.Effects,
        unparked: Sequence[int] = (),
        reopening: bool = False,
    ) -> list[str]:
        """One statement (after a read when records are rewritten) doing ``effects``,
        dropping the parked rows of ``unparked`` too; the queues released members were
        pushed to."""
        tasks = view.submitted.tasks
        rewritten = await self._rewritten(conn, view, effects)
        by_id = {t.id: t for t in rewritten}
        mode, seconds, own_ttls, expiring, ttls = _expiries(view, effects, list(by_id))
        if effects.ended and view.status is not WorkflowStatus.FAILED:
            unparked = range(len(tasks))  # a failed one keeps them: a requeue may restore
        elif view.status is WorkflowStatus.CANCELLED:
            unparked = [*unparked, *effects.cancel]
        nodes, remaining, done = view.rows()
        rows = await conn.fetch(
            self.sql.step,
            view.id,
            view.status.value,
            view.left,
            view.error,
            view.finished_at,
            mode,
            seconds,
            nodes,
            remaining,
            done,
            effects.release,
            list(unparked),
            reopening,
            list(by_id),
            [t.model_dump_json() for t in rewritten],
            [t.lease_token for t in rewritten],
            [t.status.value for t in rewritten],
            own_ttls,
            expiring,
            ttls,
        )
        return [row[0] for row in rows]

    async def _rewritten(self, conn: Conn, view: View, effects: kit.Effects) -> list[Task]:
        """The records of nodes cancelled (those not final yet, as they become:
        ``cancelled``) and restored (those ``cancelled``, as they become: ``waiting``)."""
        keys = [*effects.cancel, *effects.restore]
        if not keys:
            return []
        tasks = view.submitted.tasks
        restored = {tasks[k] for k in effects.restore}
        rows = await conn.fetch(self.sql.members, [tasks[k] for k in keys])
        now = datetime.now(UTC)
        rewritten = []
        for row in rows:
            try:
                task = _records.decode(*row)
            except CorruptRecordError as exc:
                log.warning("workflow %s: member left as it is: %s", view.id, exc)
                continue
            if task.id in restored:
                if task.status is not TaskStatus.CANCELLED:
                    continue
                task.status, task.finished_at, task.error = TaskStatus.WAITING, None, None
            elif task.status.is_final:
                continue
            else:
                task.status, task.finished_at = TaskStatus.CANCELLED, now
                task.error = task.error or CANCELLED_WHY
            rewritten.append(task)
        return rewritten


# -- helpers ---------------------------------------------------------------------------


def _expiries(
    view: View, effects: kit.Effects, rewritten: list[str]
) -> tuple[int, float | None, list[str | None], list[str], list[str | None]]:
    """The workflow row's expiry (mode, seconds), the TTLs of the records ``rewritten``,
    and the other records whose TTL is set (the workflow ended) or lifted (reopened);
    nothing to work out, so nothing per member, for a step that does neither."""
    tasks = view.submitted.tasks
    if effects.ended:
        ttl_of = dict(zip(tasks, view.submitted.ttls, strict=True))
        skip = set(rewritten)
        expiring = [i for i in tasks if i not in skip and ttl_of[i] is not None]
        seconds = kit.expiry(view.state())
        return (
            SET,
            seconds,
            numbers(ttl_of[i] for i in rewritten),
            expiring,
            numbers(ttl_of[i] for i in expiring),
        )
    own: list[str | None] = [None] * len(rewritten)
    if effects.reopened:  # lifted (a released record's is, as it is released)
        skip = {*rewritten, *(tasks[k] for k in effects.release)}
        expiring = [i for i in tasks if i not in skip]
        return CLEAR, None, own, expiring, [None] * len(expiring)
    return KEEP, None, own, [], []


def _needs(known: Known, key: int, status: TaskStatus) -> tuple[list[int], bool, bool]:
    """The node rows an outcome of ``key`` needs; all of them, or all of them if its
    workflow still runs. All: when this process has not parsed the graph; if running: when
    the outcome fails the workflow (which drops every member waiting). One that ends it
    loads them all too (the lock sees that from the members left)."""
    if known is None:
        return [], True, False
    graph = known[1].graph
    if not 0 <= key < len(graph.nodes):
        return [], True, False
    node = graph.nodes[key]
    fails = status is not TaskStatus.SUCCEEDED and not node.errback
    return needed(known[1], key), False, fails and graph.on_failure == "fail"


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
