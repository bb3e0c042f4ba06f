"""Unique keys in the ``unique_keys`` table, taken in the enqueue's own ``BEGIN
IMMEDIATE`` transaction: the holder's record is read, the rule applied
(:func:`~bgcoor_core._unique.holds`) and the key row written with the records and messages,
or nothing is (see :mod:`bgcoor_core._unique`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from ..._broker import Message
from ..._task import Task, TaskStatus, validate_queue_name
from ..._unique import holds, take_keys, unique_until
from ._connection import Connection, transaction

#: An enqueue's writes inside the caller's transaction (the atomic enqueue's own).
Store = Callable[[sqlite3.Connection, Sequence[Task], Sequence[Message]], None]

_STATUSES = {s.value: s for s in TaskStatus}
_HOLDER = (
    "SELECT k.task_id, k.until, t.status FROM unique_keys AS k LEFT JOIN tasks AS t "
    "ON t.id = k.task_id AND (t.expires_at IS NULL OR t.expires_at > ?) WHERE k.key = ?"
)


class SQLiteUniques:
    """The :class:`~bgcoor_core.UniqueStore` of an :class:`SQLiteBackend`."""

    def __init__(self, db: Connection, store: Store, wake: Callable[[], None]) -> None:
        self.db = db
        self._store = store
        self._wake = wake

    async def enqueue_unique(
        self, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> list[str | None]:
        for message in messages:
            validate_queue_name(message.queue)
        holders = await self.db.run(enqueue_unique, tasks, messages, self._store)
        if any(holder is None for holder in holders):
            self._wake()
        return holders


def enqueue_unique(
    conn: sqlite3.Connection,
    tasks: Sequence[Task],
    messages: Sequence[Message],
    store: Store,
) -> list[str | None]:
    with transaction(conn):
        now = time.time()
        holders, taken = take_keys(tasks, lambda key: _holder(conn, key, now))
        chosen = [i for i, holder in enumerate(holders) if holder is None]
        store(conn, [tasks[i] for i in chosen], [messages[i] for i in chosen])
        conn.executemany(
            "INSERT INTO unique_keys (key, task_id, until) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id, until = excluded.until",
            [(key, task.id, unique_until(task)) for key, task in taken.items()],
        )
        return holders


def _holder(conn: sqlite3.Connection, key: str, now: float) -> str | None:
    row = conn.execute(_HOLDER, (now, key)).fetchone()
    if row is None:
        return None
    task_id, until, status = row
    if holds(_STATUSES.get(status) if status is not None else None, until, now):
        return str(task_id)
    return None
