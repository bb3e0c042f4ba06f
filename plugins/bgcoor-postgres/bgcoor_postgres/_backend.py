"""PostgresBackend: broker and storage in one PostgreSQL schema.

Round trips per task (see the README): enqueue 1 per batch, reserve 1 per batch (it also
marks the records running), outcome + ack 1, coalesced across tasks that finish together.
Tasks with a rate or concurrency limit add a gate step per reserve that meets them
(``_gates.py``), but for a task the rate deferred to its slot, without a concurrency
limit, which the reserve statement takes alone once due; the others pay nothing for it.
An enqueue into a queue with a queue limit is a transaction that locks and counts the
queue first (``_queue_limits.py``); the others are the one statement they always were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg

from bgcoor_core import (
    Broker,
    Capability,
    Codec,
    DeadLetter,
    DuplicateTaskError,
    Fire,
    FireOutcome,
    Message,
    QueueStats,
    Reservation,
    ScheduleDefinition,
    ScheduleEntry,
    StaleLeaseError,
    Storage,
    Task,
    TaskStatus,
)
from bgcoor_core.kit import (
    UNIQUE_HEADER,
    Coalescer,
    check_page,
    is_queue_name,
    pause_within,
    printable,
    record_jsons,
    shielded_take,
    validate_queue_name,
)

from . import _checks, _records
from ._database import CONNECTION_ERRORS, Conn, Database, Operation
from ._gates import PostgresGates, parse_gate
from ._listener import Listener
from ._options import PostgresTarget
from ._queue_limits import PostgresQueueLimits
from ._records import Write
from ._schedules import PostgresSchedules
from ._sql import Statements, gated, numbers
from ._uniques import PostgresUniques
from ._workflows import PostgresWorkflows

log = logging.getLogger("bgcoor.postgres")
Tasks = list[Task]  # the class below defines a method named ``list``
Records = list[asyncpg.Record]
Lines = list[str]
Verdicts = list[BaseException | None]
Entries = list[ScheduleEntry]
Outcomes = list[FireOutcome]
Extension = tuple[str, str, float]  # message id, token, lease seconds
#: A step run on the enqueue's connection, in its transaction, before the insert.
Check = Callable[[Conn], Awaitable[None]]


@dataclass
class _LoopState:
    """What belongs to one event loop: wake-ups, coalescers, background work."""

    listener: Listener
    writes: Coalescer[Write, None]
    extensions: Coalescer[Extension, None]
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    #: (queues, listener generation before the take, until when to trust NOTIFY) of the
    #: last take that left fewer rows than it could have taken: those queues were empty
    #: then (until: :data:`TRUST_NOTIFY` later, or sooner if that take said when its next
    #: message falls due: a rate-limit slot, an eta).
    drained: tuple[tuple[str, ...], int, float] | None = None


#: How long after a take that emptied its queues the next reserve trusts NOTIFY alone
#: instead of taking again at once: saves the empty round trip that would follow every
#: partial batch. Etas and expired leases (which send no NOTIFY) wait this much longer.
TRUST_NOTIFY = 0.05
#: How long ``result()`` waits for the LISTEN connection before it polls instead.
LISTEN_WAIT = 2.0


class PostgresBackend(Broker, Storage):
    """Broker and storage over one PostgreSQL schema; see the package README."""

    capabilities = frozenset(Capability)
    #: After these (retries of :class:`Database` exhausted) an enqueue may or may not
    #: have committed; the manager tries it again with the same ids.
    transient_errors = (ConnectionError, TimeoutError, *CONNECTION_ERRORS)

    def __init__(self, target: PostgresTarget, codec: Codec) -> None:
        Broker.__init__(self, codec)
        self.target = target
        self.options = target.options
        self.sql = Statements(target.schema, fast_lease_commits=self.options.fast_lease_commits)
        self._db = Database(target)
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._schedules = PostgresSchedules(self._db, target.schema, self._enqueue_on)
        self._workflows = PostgresWorkflows(self._db, self.sql, self._enqueue_on, self._wake)
        self._limits = PostgresQueueLimits(self, self.sql)
        self._uniques = PostgresUniques(
            self._db, self.sql, self._enqueue_on, self._wake, self._limits.limited
        )
        self._gates = PostgresGates(self._db, self.sql)

    def __repr__(self) -> str:
        return f"PostgresBackend({self.target.safe_dsn!r}, schema={self.target.schema!r})"

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            batch = self.options.max_batch
            state = _LoopState(
                Listener(self._db, self.sql.channel, self.sql.done_channel),
                Coalescer(self._flush_writes, key=lambda w: w.task.id, max_batch=batch),
                Coalescer(self._flush_extensions, key=lambda e: e[0], max_batch=batch),
            )
            self._states[loop] = state
        return state

    # -- broker: producing -------------------------------------------------------------

    async def push_messages(self, messages: Sequence[Message]) -> None:
        _check_messages(messages)
        if messages:
            statement = self.sql.push_gated if gated(messages) else self.sql.push
            args = [*_message_columns(messages), *_gate_column(messages)]
            check = self._limit_check(messages, records=False)
            await self._db.run(_retrying_insert(statement, args, check))
            self._state().listener.wake(m.queue for m in messages)

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        """Store the records and push the messages in one statement (all or nothing)."""
        _check_messages(messages)
        args = self._enqueue_args(tasks, messages)
        check = self._limit_check(messages, records=True)
        await self._db.run(_retrying_insert(self._enqueue_statement(messages), args, check))
        self._state().listener.wake(m.queue for m in messages)

    async def enqueue_in(self, conn: Conn, tasks: Sequence[Task]) -> list[str | None]:
        """Enqueue ``tasks`` on the caller's connection, inside the caller's transaction.

        The records and messages exist only if that transaction commits; consumers are
        notified at the commit. ``conn`` must be connected to this backend's database.
        Unique tasks (a ``unique_key``) take their keys in that transaction too: other
        producers of those keys wait for it to end, and a rollback leaves the keys as
        they were. For each task, the id of the task holding its key (it was not
        enqueued), or ``None``.

        Into a queue with a queue limit, the enqueue locks the queue in that transaction
        too (see ``_queue_limits.py``): other producers of the queue wait for it to end.
        A refusal (:class:`~bgcoor_core.QueueFullError`) writes nothing and leaves the
        transaction usable.
        """
        messages = [self.to_message(t) for t in tasks]
        _check_messages(messages)
        if not any(UNIQUE_HEADER in t.headers for t in tasks):
            statement = self._enqueue_statement(messages)
            args = self._enqueue_args(tasks, messages)
            check = self._limit_check(messages, records=True)
            if check is None:
                await _insert(conn, statement, args)
            elif conn.is_in_transaction():
                await check(conn)
                await _insert(conn, statement, args)
            else:
                async with conn.transaction(isolation="read_committed"):
                    await check(conn)
                    await _insert(conn, statement, args)
            return [None] * len(tasks)
        if conn.is_in_transaction():
            return await self._uniques.take(conn, tasks, messages)
        # the keys (and limited queues) stay locked until the enqueue is in
        async with conn.transaction(isolation=self._uniques.isolation(messages)):
            return await self._uniques.take(conn, tasks, messages)

    def _enqueue_args(self, tasks: Sequence[Task], messages: Sequence[Message]) -> list[Any]:
        """The enqueue's parameters: messages, records and (only if one has a gate) the
        messages' gates, for :meth:`_enqueue_statement`."""
        return [
            *_message_columns(messages),
            *_new_record_columns(tasks, messages),
            *_gate_column(messages),
        ]

    def _enqueue_statement(self, messages: Sequence[Message]) -> str:
        return self.sql.enqueue_gated if gated(messages) else self.sql.enqueue

    def _limit_check(self, messages: Sequence[Message], *, records: bool) -> Check | None:
        """The queue limit check of a producer's enqueue of ``messages``, to run in its
        transaction before the insert; ``None`` (no transaction, no statement more) when
        no queue of the batch has a limit."""
        if not self._limits.limited(messages):
            return None
        return partial(self._limits.refuse_if_full, messages=messages, records=records)

    async def _enqueue_on(
        self,
        conn: Conn,
        tasks: Sequence[Task],
        messages: Sequence[Message],
        *,
        statement: str | None = None,
        extra: Sequence[Any] = (),
        limited: bool = False,
    ) -> None:
        """``enqueue_atomically``'s statement on the caller's connection (a fire), or
        ``statement``: that one (or its ``_gated`` twin, for ``messages`` with a gate)
        with more CTEs, whose parameters ``extra`` follow. ``limited``: a producer's
        enqueue (the unique-key one), checked against the queue limits first, in the
        connection's transaction."""
        _check_messages(messages)
        args = [*self._enqueue_args(tasks, messages), *extra]
        check = self._limit_check(messages, records=True) if limited else None
        if check is not None:
            await check(conn)
        await _insert(conn, statement or self._enqueue_statement(messages), args)

    # -- broker: consuming -------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> list[Reservation]:
        names = [validate_queue_name(q) for q in queues]
        state = self._state()
        state.listener.start()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            woken = state.listener.add(names)
            try:
                quiet = self._quiet_for(state, names, give_up)
                if quiet > 0:
                    await _wait(woken, quiet)
                    continue
                generation = state.listener.generation
                rows, due, left = await self._take(state, names, lease, limit)
                now = loop.time()
                drained = len(rows) < limit and not left
                # (a due time already past: rows another reserve holds locked right now)
                trust = TRUST_NOTIFY if due is None or due <= 0 else min(TRUST_NOTIFY, due)
                state.drained = (tuple(names), generation, now + trust) if drained else None
                if rows or give_up <= now:
                    return [self._reservation(row) for row in rows]
                await _wait(woken, self._pause(state, give_up - now, due))
            finally:
                state.listener.discard(woken)

    def _quiet_for(self, state: _LoopState, queues: list[str], give_up: float) -> float:
        """How long to wait for a NOTIFY before taking: >0 only right after a take that
        found ``queues`` empty, with no wake-up since and the listener connected."""
        drained = state.drained
        if drained is None or not state.listener.connected:
            return 0.0
        names, generation, until = drained
        now = asyncio.get_running_loop().time()
        if names != tuple(queues) or generation != state.listener.generation:
            return 0.0
        return min(until, give_up) - now

    def _pause(self, state: _LoopState, remaining: float, due: float | None) -> float:
        """Sleep until woken, the next eta or lease deadline, or the safety-net poll."""
        poll = self.options.poll_interval if state.listener.connected else 0.1
        pause = min(remaining, poll)
        if due is not None:
            # a due time already past means rows locked by another consumer right now
            pause = min(pause, max(due, 0.005))
        return pause

    async def _take(
        self, state: _LoopState, queues: list[str], lease: float, limit: int
    ) -> tuple[Records, float | None, bool]:
        """One statement leases up to ``limit`` messages. If our caller is cancelled
        meanwhile (pool shutdown), what it leased is handed straight back.

        When it returns gated candidates (left untouched), the gate step decides them,
        and while that parked or deferred some, so that fewer were leased than asked for,
        the reserve goes on with the next ones (as many rounds as :data:`GATE_ROUNDS`):
        waiting messages never make a reserve return fewer than are deliverable. Except
        the backlog of a key found saturated: once something is leased, a round whose
        statement leased nothing and found only candidates of keys this take saw
        saturated ends the take, and what it leased goes to its worker now rather than
        after the backlog's decisions (which would most likely wait too; the next take,
        at once, decides them). Also returns how long until the next message falls due,
        when the last statement found nothing more to take (``None`` otherwise), and
        whether the take stopped with messages left to decide (the next one should not
        wait)."""
        wanted = max(limit, 1)
        due: float | None = None
        left = False

        async def take() -> Records:
            nonlocal due, left
            got: Records = []
            saturated: set[str] = set()
            for _ in range(GATE_ROUNDS):
                rows = await self._db.run(self._reserving(queues, wanted - len(got), lease))
                leased = [r for r in rows if r["token"] is not None]
                got += leased
                candidates = sorted((r for r in rows if _is_candidate(r)), key=_in_order)
                if not candidates:
                    due = rows[0]["due"] if rows and rows[0]["id"] is None else None
                    return got
                if got and not leased and _behind_saturated(candidates, saturated):
                    left = True
                    return got
                try:
                    stepped = await self._db.run(
                        partial(self._gates.step, candidates=candidates, queues=queues, lease=lease)
                    )
                except BaseException:
                    self._release(state, got)  # nothing is leased by a reserve that failed
                    raise
                got += stepped.rows
                saturated |= stepped.saturated
                if len(got) >= wanted:
                    return got
            due, left = 0.0, True  # rounds left over: go on soon
            return got

        rows = await shielded_take(take(), lambda got: self._release(state, got))
        return sorted(rows, key=_in_order), due, left

    def _reserving(self, queues: list[str], limit: int, lease: float) -> Operation[Records]:
        """The reserve statement as an operation for :meth:`Database.run`."""

        async def reserve(conn: Conn) -> Records:
            return await conn.fetch(self.sql.reserve, queues, limit, lease)

        return reserve

    def _release(self, state: _LoopState, taken: Records) -> None:
        """Hand back what a cancelled reserve took."""
        rows = [r for r in taken if r["id"] is not None]
        if rows:
            ids, tokens = [r["id"] for r in rows], [r["token"] for r in rows]
            self._spawn(state, self._db.run(lambda c: c.execute(self.sql.release, ids, tokens)))

    def _reservation(self, row: asyncpg.Record) -> Reservation:
        message_id, queue, body, deliveries, lost, token = row[:6]
        defect = _row_defect(row)
        if defect is None:
            try:
                task, defect = self.decode(message_id, queue, body)
            except Exception as exc:  # whatever it is, it costs this message only
                defect = f"corrupt message {message_id}: {printable(repr(exc), 300)}"
        if defect is not None:
            task = Task.model_construct(id=message_id, name=CORRUPT, queue=queue)
        at = row["started"]  # when the reserve marked its record running, else None
        started_at = None if at is None else datetime.fromtimestamp(at, UTC)
        return Reservation(task, token, deliveries, lost, defect, at is not None, started_at)

    async def ack(self, reservation: Reservation) -> None:
        await self._settle(self.sql.ack, reservation)

    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        await self._settle(self.sql.nack, reservation, max(delay, 0.0), body)
        if delay <= 0:
            self._state().listener.wake([reservation.queue])

    async def extend(self, reservation: Reservation, lease: float) -> None:
        await self._state().extensions.submit((reservation.task.id, reservation.token, lease))

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        # text columns cannot hold NUL; any other character is kept
        await self._settle(self.sql.dead_letter, reservation, reason.replace("\x00", "\\x00"), body)

    async def _settle(self, statement: str, reservation: Reservation, *args: Any) -> None:
        """Run ``statement`` for the message while ``reservation`` holds its lease."""
        message_id, token = reservation.task.id, reservation.token
        changed = await self._db.run(lambda c: c.fetchval(statement, message_id, token, *args))
        if not changed:
            raise StaleLeaseError(f"task {message_id}: lease {token[:8]} is no longer held")

    async def _flush_extensions(self, items: Sequence[Extension]) -> Verdicts:
        ids, tokens = [item[0] for item in items], [item[1] for item in items]
        leases = [item[2] for item in items]
        rows = await self._db.run(lambda c: c.fetch(self.sql.extend, ids, tokens, numbers(leases)))
        extended = {row[0] for row in rows}
        return [
            None
            if message_id in extended
            else StaleLeaseError(f"task {message_id}: lease {token[:8]} is no longer held")
            for message_id, token, _ in items
        ]

    # -- broker: dead letters and inspecting -------------------------------------------

    async def dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        check_page(limit)
        rows = await self._db.run(
            lambda c: c.fetch(self.sql.dead_letters, queue, limit, max(offset, 0))
        )
        letters = []
        for message_id, body, reason, dead_at in rows:
            task, defect = self.decode(message_id, queue, body)
            letters.append(DeadLetter(message_id, queue, reason, None if defect else task, dead_at))
        return letters

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        if ids is not None and not ids:
            return []
        wanted = None if ids is None else list(ids)
        _checks.text("task id", wanted or ())
        rows = await self._db.run(lambda c: c.fetch(self.sql.requeue_dead, queue, wanted))
        requeued = [row[0] for row in rows if row[0] is not None]
        if requeued:
            self._state().listener.wake([queue])
        return requeued

    async def purge_dead(self, queue: str) -> int:
        return await self._count(self.sql.purge_dead, queue)

    async def purge(self, queue: str) -> int:
        return await self._count(self.sql.purge, queue)

    async def _count(self, statement: str, *args: Any) -> int:
        status = await self._db.run(lambda c: c.execute(statement, *args))
        return int(status.rsplit(" ", 1)[-1])

    async def stats(self, queue: str) -> QueueStats:
        row = await self._db.run(lambda c: c.fetchrow(self.sql.stats, queue))
        assert row is not None
        return QueueStats(*row)

    async def queues(self) -> list[str]:
        rows = await self._db.run(lambda c: c.fetch(self.sql.queues))
        names = [row[0] for row in rows]
        valid = [name for name in names if is_queue_name(name)]
        if len(valid) < len(names):  # written by something else: not a queue to report on
            odd = [printable(name, 70) for name in names if not is_queue_name(name)]
            log.warning("queues: skipped invalid queue names %s", ", ".join(map(repr, odd)))
        return valid

    # -- storage -----------------------------------------------------------------------

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        await self._state().writes.submit(_write(task, ttl))

    async def save_many(self, tasks: Sequence[Task]) -> None:
        """New records only, all or none, in one statement (see ``Storage.save_many``)."""
        if tasks:
            args = _new_record_columns(tasks)
            await self._db.run(_retrying_insert(self.sql.save_new, args))

    async def get(self, task_id: str) -> Task | None:
        _checks.text("task id", [task_id])
        row = await self._db.run(lambda c: c.fetchrow(self.sql.get, task_id))
        return None if row is None else _records.decode(task_id, *row)

    async def wait(self, task_id: str, *, timeout: float | None) -> Task:
        """The record once final: read now, then again each time the listener hears it
        was written final (``pg_notify`` in the writing statement, see ``_listener.py``),
        and every ``result_safety_poll`` seconds anyway. Without the LISTEN connection,
        the default polling (1 ms doubling to ``Storage.wait_poll_max``)."""
        listener = self._state().listener
        notice = await listener.watch(task_id, LISTEN_WAIT)
        if notice is None:
            return await super().wait(task_id, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                task = await self.get(task_id)
                if task is not None and task.status.is_final:
                    return task
                pause = pause_within(deadline, self.options.result_safety_poll, task_id, timeout)
                await asyncio.wait([notice], timeout=pause)
                if notice.done():  # told (or the connection changed): look again
                    listener.unwatch(task_id, notice)
                    renewed = await listener.watch(task_id, LISTEN_WAIT)
                    if renewed is None:
                        rest = None if deadline is None else deadline - time.monotonic()
                        return await super().wait(task_id, timeout=rest)
                    notice = renewed
        finally:
            listener.unwatch(task_id, notice)

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> Tasks:
        check_page(limit)
        given = {"status": status, "name": name, "queue": queue}
        filters = {column: str(value) for column, value in given.items() if value is not None}
        _checks.text("filter", [*filters.values(), after])
        while True:
            rows = await self._page(filters, after, limit)
            tasks, skipped = _records.decode_page(rows)
            if tasks or not skipped or len(rows) < limit:
                return tasks
            after = rows[-1][0]  # a full page of corrupt records: try the next one

    async def _page(self, filters: dict[str, str], after: str | None, limit: int) -> Records:
        statement = _records.list_statement(self.sql, filters, after)
        args = [*filters.values(), *([after] if after is not None else []), limit]
        return await self._db.run(lambda c: c.fetch(statement, *args))

    async def counts(self) -> dict[TaskStatus, int]:
        rows = await self._db.run(lambda c: c.fetch(self.sql.counts))
        result = dict.fromkeys(TaskStatus, 0)
        for status, count in rows:
            if status in result:  # an unknown status (a corrupt record) is not counted
                result[TaskStatus(status)] = count
        return result

    async def delete_expired(self) -> int:
        """Delete expired records in chunks of 5,000 (worker pools call it every
        ``BGCOOR_CLEANUP_SECONDS``; ``SKIP LOCKED`` keeps concurrent cleaners apart), and
        ended workflows kept past their expiry; the count is of records."""
        deleted = 0
        while True:
            chunk = await self._count(self.sql.delete_expired, 5000)
            deleted += chunk
            if chunk < 5000:
                break
        await self._workflows.delete_expired()
        await self._uniques.delete_expired()
        await self._gates.delete_expired()
        return deleted

    # -- both: outcome + ack in one statement ------------------------------------------

    def shares_store_with(self, storage: Storage) -> bool:
        return storage is self or (
            isinstance(storage, PostgresBackend)
            and (storage.target.dsn, storage.target.schema) == (self.target.dsn, self.target.schema)
        )

    async def complete(self, reservation: Reservation, task: Task, *, ttl: float | None) -> None:
        await self._state().writes.submit(_write(task, ttl, reservation.token))

    async def _flush_writes(self, writes: Sequence[Write]) -> Verdicts:
        saves = [w for w in writes if w.token is None]
        completions = [w for w in writes if w.token is not None]
        results: dict[int, BaseException | None] = {}
        for group, complete in ((saves, False), (completions, True)):
            if group:
                outcome = await self._db.run(
                    partial(_records.write, sql=self.sql, writes=group, complete=complete)
                )
                results.update(zip(map(id, group), outcome, strict=True))
        return [results[id(w)] for w in writes]

    async def migrate(self) -> Lines:
        return await self._db.migrate()

    # -- schedules (ScheduleStore, see _schedules) -------------------------------------

    async def put_schedules(self, definitions: Sequence[ScheduleDefinition]) -> None:
        await self._schedules.put_schedules(definitions)

    async def get_schedules(self) -> Entries:
        return await self._schedules.get_schedules()

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self._schedules.delete_schedule(schedule_id)

    async def set_schedule_paused(self, schedule_id: str, paused: bool) -> bool:
        return await self._schedules.set_schedule_paused(schedule_id, paused)

    async def fire(self, requests: Sequence[Fire]) -> Outcomes:
        """Each request by the schedule rule, the batch in one transaction."""
        outcomes = await self._schedules.fire(requests)
        fired = zip(requests, outcomes, strict=True)
        queues = [r.message.queue for r, o in fired if o is FireOutcome.FIRED and r.message]
        if queues:
            self._state().listener.wake(queues)
        return outcomes

    # -- workflows (WorkflowStore, see _workflows) -------------------------------------

    def workflow_store(self, storage: Storage) -> PostgresWorkflows | None:
        """Workflows stepped in this schema's transactions, if ``storage`` is this schema."""
        return self._workflows if self.shares_store_with(storage) else None

    # -- unique keys (UniqueStore, see _uniques) --------------------------------------

    def unique_store(self, storage: Storage) -> PostgresUniques | None:
        """Unique keys taken in this schema's enqueue transactions, if ``storage`` is
        this schema."""
        return self._uniques if self.shares_store_with(storage) else None

    def _wake(self, queues: Iterable[str]) -> None:
        self._state().listener.wake(queues)

    # -- lifecycle ---------------------------------------------------------------------

    def _spawn(self, state: _LoopState, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        state.background.add(task)
        task.add_done_callback(_log_failure)
        task.add_done_callback(state.background.discard)

    async def close(self) -> None:
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.writes.drain()
            await state.extensions.drain()
            await state.listener.close()
            await asyncio.gather(*state.background, return_exceptions=True)
        drop = self.sql.drop_schema if self.options.temporary else None
        await self._db.close(drop_schema=drop)


# -- helpers ---------------------------------------------------------------------------


#: The name of a placeholder task standing for a message or record that cannot be read
#: (the executor's own placeholders use it too).
CORRUPT = "bgcoor.corrupt"


#: Rounds of reserve statement and gate step one take runs at most while gated messages
#: are parked or deferred instead of leased (the next take goes on from there).
GATE_ROUNDS = 16


def _in_order(row: asyncpg.Record) -> tuple[int, int, int]:
    """The reserve's order of a row: queue (as asked), higher priority, FIFO."""
    return row["ord"], -row["priority"], row["seq"]


def _behind_saturated(candidates: Sequence[asyncpg.Record], saturated: set[str]) -> bool:
    """Whether every candidate is of a key in ``saturated`` (its gate readable)."""
    for row in candidates:
        gate = parse_gate(row["gate"])
        if isinstance(gate, str) or gate.key not in saturated:
            return False
    return True


def _is_candidate(row: asyncpg.Record) -> bool:
    """A gated row the reserve returned untouched, for the gate step (one it leased
    has a token)."""
    return row["token"] is None and row["gate"] is not None


def _row_defect(row: asyncpg.Record) -> str | None:
    """What the reserve found wrong with a taken row's bookkeeping, or ``None``. A gate
    that cannot be read is one too (the gate step takes such a row as a defect; the
    reserve, which leases an admitted row without a concurrency limit itself, finds it
    here)."""
    odd, status, gate = row["odd"], row["odd_status"], row["gate"]
    if odd is None and gate is not None:
        parsed = parse_gate(gate)
        odd = parsed if isinstance(parsed, str) else None
    if odd is not None:
        return f"corrupt message {row[0]}: {printable(odd, 80)} is out of range"
    if status is not None:
        return f"corrupt record: task {row[0]} has unknown status {printable(status, 40)!r}"
    return None


def _write(task: Task, ttl: float | None, token: str | None = None) -> Write:
    """A write checked before it joins a coalesced batch, where a bad value would fail
    the statement for every task in it."""
    _checks.text("task id, name, queue or lease token", _text_of(task))
    return Write(task, _checks.optional_seconds("ttl", ttl), token)


def _text_of(task: Task) -> tuple[str | None, ...]:
    return task.id, task.name, task.queue, task.lease_token


def _check_messages(messages: Sequence[Message]) -> None:
    for message in messages:
        validate_queue_name(message.queue)
        _checks.eta(message.id, message.eta)
    _checks.text("task id", (m.id for m in messages))
    _checks.text("gate", (m.gate for m in messages if m.gate is not None))
    if len({m.id for m in messages}) != len(messages):
        raise DuplicateTaskError("the same task id appears twice in one batch")


def _new_record_columns(tasks: Sequence[Task], messages: Sequence[Message] = ()) -> list[list[Any]]:
    """Columns of new records; ``messages``: those made from them, in the same order,
    whose record text is reused (:func:`~bgcoor_core.kit.record_jsons`)."""
    if len({t.id for t in tasks}) != len(tasks):
        raise DuplicateTaskError("the same task id appears twice in one batch")
    for task in tasks:
        _checks.text("task id, name, queue or lease token", _text_of(task))
    return [
        [t.id for t in tasks],
        [t.name for t in tasks],
        [t.queue for t in tasks],
        [t.status.value for t in tasks],
        [t.lease_token for t in tasks],
        record_jsons(tasks, messages),
    ]


def _message_columns(messages: Sequence[Message]) -> list[list[Any]]:
    return [
        [m.id for m in messages],
        [m.queue for m in messages],
        [m.priority for m in messages],
        [m.body for m in messages],
        numbers(m.eta for m in messages),
    ]


def _gate_column(messages: Sequence[Message]) -> list[list[str | None]]:
    """The gates' parameter of a ``_gated`` statement, none for a batch without gates."""
    return [[m.gate for m in messages]] if gated(messages) else []


def _retrying_insert(statement: str, args: list[Any], check: Check | None = None) -> Any:
    """An insert operation for :meth:`Database.run`. Retried after a lost connection, it
    may find its own rows from the attempt that committed unseen: that is success.
    ``check``: the queue limit check, run first in the insert's own transaction."""
    attempts = 0

    async def operation(conn: Conn) -> None:
        nonlocal attempts
        attempts += 1
        try:
            if check is None:
                await _insert(conn, statement, args)
            else:
                async with conn.transaction(isolation="read_committed"):
                    await check(conn)
                    await _insert(conn, statement, args)
        except DuplicateTaskError:
            if attempts == 1:
                raise
            log.info("insert retried after a lost connection had already committed")

    return operation


async def _insert(conn: Conn, statement: str, args: list[Any]) -> None:
    """Run an enqueue or ``save_many``: all or nothing, a duplicate id refusing it all."""
    try:
        await conn.fetchrow(statement, *args)
    except asyncpg.UniqueViolationError as exc:
        # detail: Key (id)=(...) already exists.
        raise DuplicateTaskError(
            f"a task is already waiting or reserved in the broker: {exc.detail}; "
            "nothing was enqueued"
        ) from None
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != "BG409":  # refuse(): a record with one of the ids exists
            raise
        what = str(exc).removeprefix("bgcoor: ")
        raise DuplicateTaskError(f"{what}; nothing was enqueued") from None


async def _wait(future: asyncio.Future[None], timeout: float) -> None:
    if timeout <= 0 or future.done():
        return
    try:
        async with asyncio.timeout(timeout):
            await future
    except TimeoutError:
        pass


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background PostgreSQL work failed: %s", task.exception())
