"""Unique keys in a ``unique_keys`` table (key, the task holding it, the end of its window),
taken in the enqueue's own transaction.

An enqueue of a batch with keys is one transaction of a fixed number of statements,
however many tasks it carries:

1. lock the rows of the batch's keys, in key order, inserting the absent ones
   (``INSERT ... ON CONFLICT DO UPDATE``): producers of one key queue here, and the
   first row of a new key is taken by one of them only, never by two that both found it
   absent;
2. read the holders' records (skipped when no key has one yet). A statement of its own:
   a producer that waited for the lock needs a snapshot taken after it, which shows the
   record its predecessor just committed;
3. in Python, :func:`bgcoor_core.kit.holds` decides, in batch order, which tasks
   are enqueued (a key held, by a stored task or by an earlier task of the batch, returns
   its holder);
4. the backend's enqueue statement for the chosen tasks, with one more CTE writing the
   keys they took (skipped when every task was deduplicated). When a chosen task goes to
   a queue with a queue limit, the backend locks and counts that queue first (see
   ``_queue_limits.py``: the tasks deduplicated do not count), and the transaction is
   ``READ COMMITTED`` whatever the server's default.

So: BEGIN, lock, read, enqueue, COMMIT. :meth:`PostgresUniques.take` runs the same
statements inside a caller's transaction (``enqueue_in``): the keys are locked until it
ends, and a rollback leaves them as they were. Nothing releases a key: the next enqueue
takes it over once its holder is final (or its record gone) and its window over.
:meth:`PostgresUniques.delete_expired` deletes rows whose holder's record is gone and
whose window is over (the backend's sweep of expired records).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

from bgcoor_core import Message, Task, TaskStatus
from bgcoor_core.kit import holds, take_keys, unique_key, unique_until

from . import _checks
from ._database import Conn, Database
from ._sql import LIVE, Statements, gated, numbers, quote_ident

#: Wakes this process's consumers of these queues (NOTIFY reaches the others).
Wake = Callable[[Iterable[str]], None]
#: The queues of a batch that have a queue limit (none: the batch is not limited).
Limited = Callable[[Sequence[Message]], Sequence[str]]
_STATUSES = {s.value: s for s in TaskStatus}


class Enqueue(Protocol):
    """The backend's enqueue on a connection, with another statement and its parameters."""

    def __call__(
        self,
        conn: Conn,
        tasks: Sequence[Task],
        messages: Sequence[Message],
        *,
        statement: str,
        extra: Sequence[Any],
        limited: bool,
    ) -> Awaitable[None]: ...


class UniqueStatements:
    """Built once per schema (see the module docstring)."""

    def __init__(self, sql: Statements) -> None:
        s = quote_ident(sql.schema)
        k, t = f"{s}.unique_keys", f"{s}.tasks"
        # $1 the batch's keys, sorted and distinct (one lock order for every producer)
        self.lock = (
            f"INSERT INTO {k} AS k (key) SELECT u.key "
            "FROM unnest($1::text[]) WITH ORDINALITY AS u(key, ord) ORDER BY u.ord "
            "ON CONFLICT (key) DO UPDATE SET task_id = k.task_id "
            "RETURNING k.key, k.task_id, k.until"
        )
        # $1 the holders' ids: their live records' statuses, and the server's time
        self.holders = (
            "SELECT extract(epoch FROM clock_timestamp())::float8, "
            "array_agg(t.id), array_agg(t.status) "
            f"FROM {t} t WHERE t.id = ANY($1::text[]) AND {LIVE}"
        )

        # the enqueue statement ($1-$11), and the keys taken ($12 key, $13 task, $14 until);
        # for a batch with gates, the enqueue's twin ($1-$12) and the keys ($13-$15)
        def enqueue(statement: str, first: int) -> str:
            assert statement.startswith("WITH ")
            params = ", ".join(f"${first + n}::text[]" for n in range(3))
            return (
                f"WITH taken_keys AS (UPDATE {k} k SET task_id = u.task_id, "
                f"until = u.until::float8 FROM unnest({params}) AS u(key, task_id, until) "
                "WHERE k.key = u.key), " + statement.removeprefix("WITH ")
            )

        self.enqueue = enqueue(sql.enqueue, 12)
        self.enqueue_gated = enqueue(sql.enqueue_gated, 13)
        # the sweep: candidates locked (a row an enqueue holds is skipped), then deleted
        # by a statement of its own, whose snapshot shows any holder committed meanwhile
        over = "(k.until IS NULL OR k.until <= extract(epoch FROM clock_timestamp()))"
        gone = f"NOT EXISTS (SELECT 1 FROM {t} t WHERE t.id = k.task_id AND {LIVE})"
        self.sweep_lock = (
            f"SELECT k.key FROM {k} k WHERE {over} AND {gone} "
            "ORDER BY k.key LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        self.sweep = f"DELETE FROM {k} k WHERE k.key = ANY($1::text[]) AND {over} AND {gone}"


class PostgresUniques:
    """The :class:`~bgcoor_core.UniqueStore` of a :class:`PostgresBackend` pair."""

    def __init__(
        self, db: Database, sql: Statements, enqueue: Enqueue, wake: Wake, limited: Limited
    ) -> None:
        self._db = db
        self._enqueue = enqueue
        self._wake = wake
        self._limited = limited
        self.sql = UniqueStatements(sql)

    def isolation(self, messages: Sequence[Message]) -> Literal["read_committed"] | None:
        """The isolation level of an enqueue transaction of ours for ``messages``: the
        server's default (``None``: a plain ``BEGIN``, as always) unless one goes to a
        queue with a queue limit, whose count needs ``READ COMMITTED``."""
        return "read_committed" if self._limited(messages) else None

    async def enqueue_unique(
        self, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> list[str | None]:
        if len(tasks) != len(messages):
            raise ValueError(f"{len(tasks)} tasks with {len(messages)} messages")

        async def operation(conn: Conn) -> list[str | None]:
            async with conn.transaction(isolation=self.isolation(messages)):
                return await self.take(conn, tasks, messages)

        holders = await self._db.run(operation)
        self._wake(m.queue for m, h in zip(messages, holders, strict=True) if h is None)
        return holders

    async def take(
        self, conn: Conn, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> list[str | None]:
        """:meth:`enqueue_unique`'s statements on ``conn``, inside its transaction."""
        keys = [unique_key(t) for t in tasks]
        wanted = sorted({k for k in keys if k is not None})
        _checks.text("unique key", wanted)
        held: dict[str, tuple[str, float | None]] = {}
        if wanted:
            for key, task_id, until in await conn.fetch(self.sql.lock, wanted):
                if task_id is not None:
                    held[key] = (task_id, until)
        now, statuses = await self._statuses(conn, [h[0] for h in held.values()])

        def holder(key: str) -> str | None:
            if key not in held:
                return None
            task_id, until = held[key]
            return task_id if holds(statuses.get(task_id), until, now) else None

        holders, taken = take_keys(tasks, holder)
        chosen = [i for i, holder in enumerate(holders) if holder is None]
        if chosen:
            extra = [
                list(taken),
                [t.id for t in taken.values()],
                numbers(unique_until(t) for t in taken.values()),
            ]
            kept = [messages[i] for i in chosen]
            await self._enqueue(
                conn,
                [tasks[i] for i in chosen],
                kept,
                statement=self.sql.enqueue_gated if gated(kept) else self.sql.enqueue,
                extra=extra,
                limited=True,
            )
        return holders

    async def _statuses(
        self, conn: Conn, holders: list[str]
    ) -> tuple[float, dict[str, TaskStatus | None]]:
        """The server's time and the holders' statuses (``None``: no live record, or one
        whose status names none)."""
        if not holders:
            return 0.0, {}  # (no key has a holder: nothing is judged at any time)
        row = await conn.fetchrow(self.sql.holders, holders)
        assert row is not None  # (aggregates: always one row)
        now, ids, statuses = row
        return now, {i: _STATUSES.get(s) for i, s in zip(ids or [], statuses or [], strict=True)}

    async def delete_expired(self) -> int:
        """Delete key rows whose holder's record is gone and whose window is over, in
        chunks of 1,000 (``SKIP LOCKED``: an enqueue's keys are left alone); how many."""
        deleted = 0
        while True:
            candidates, count = await self._db.run(self._sweep_chunk)
            deleted += count
            if candidates < 1000:
                return deleted

    async def _sweep_chunk(self, conn: Conn) -> tuple[int, int]:
        async with conn.transaction():
            keys = [row[0] for row in await conn.fetch(self.sql.sweep_lock, 1000)]
            if not keys:
                return 0, 0
            result = await conn.execute(self.sql.sweep, keys)
            return len(keys), int(result.split()[-1])
