"""Queue limits (``BGCOOR_QUEUE_LIMITS``) on SQLite.

A producer's enqueue counts the waiting messages of each limited queue it adds to inside
its own ``BEGIN IMMEDIATE`` transaction (:meth:`~bgcoor_core.Broker.refuse_if_full`). The
write lock is taken by ``BEGIN``, so producers on other connections or in other processes
sharing the file wait for it: two of them can never both count the same free places.

The count comes after the enqueue's inserts, leaving its own rows out, and a refusal
rolls the whole transaction back, so a refused batch stores nothing. After, not before:
an id that is already taken is found as a :class:`~bgcoor_core.DuplicateTaskError`
first, as the memory broker does, which is how a retried enqueue whose first try went
through is told from a new one (a full queue must not hide that it is in).

Waiting means every ``ready`` row of the queue: those a reserve can take, those scheduled
(an eta, a rate limit's slot) and those parked for a concurrency slot (``slot_wait = 1``).
Leased and dead rows are not counted. The count reads the ``messages_ready`` partial index
(schema version 8) only, never the table: its cost grows with the queue's waiting rows
(one index range), not with the rest of the file. With no limits configured
:meth:`~bgcoor_core.Broker.refuse_if_full` returns at once: no statement is run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..._broker import Broker, Message

#: The waiting messages of one queue, answered from the ``messages_ready`` index.
WAITING = "SELECT count(*) FROM messages WHERE queue = ? AND state = 'ready'"


def waiting(conn: sqlite3.Connection, queue: str) -> int:
    """How many messages ``queue`` holds that are not leased and not dead."""
    count: int = conn.execute(WAITING, (queue,)).fetchone()[0]
    return count


def refuse_if_full(broker: Broker, conn: sqlite3.Connection, added: Sequence[Message]) -> None:
    """Raise :class:`~bgcoor_core.QueueFullError` when the messages ``added`` (inserted
    by this transaction, as ``ready`` rows) take a queue limited on ``broker`` past its
    limit; the caller's transaction then rolls back."""
    if not broker.queue_limits:
        return
    own: dict[str, int] = {}
    for message in added:
        own[message.queue] = own.get(message.queue, 0) + 1
    broker.refuse_if_full(added, lambda queue: waiting(conn, queue) - own[queue])
