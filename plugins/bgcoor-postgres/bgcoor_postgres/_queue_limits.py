"""Queue limits (``BGCOOR_QUEUE_LIMITS``) on PostgreSQL, checked in the enqueue's own
transaction.

A producer's enqueue into a queue with a limit (``push_messages``, ``enqueue_atomically``,
the unique-key enqueue for the tasks it does enqueue, ``enqueue_in``) runs in one
transaction, its own (``READ COMMITTED``) or the caller's:

1. lock each limited queue of the batch with ``pg_advisory_xact_lock`` of a hash of the
   schema and queue name, in sorted queue order, so producers of overlapping queues never
   deadlock. Producers of one limited queue wait here for each other until the holder's
   transaction ends; consumers never take these locks;
2. count those queues' waiting messages: ``ready`` (scheduled ones too) and ``parked``
   (waiting for a concurrency slot), not leased and not dead. A statement of its own: its
   snapshot is taken after the locks, so it shows what the producer that held them just
   committed. It reads the ``messages_waiting`` partial index only (schema version 8), and
   stops at the limit + 1, which is all the decision needs;
3. :meth:`~bgcoor_core.Broker.refuse_if_full` decides in Python. A refusal raises before
   anything is written, so inside a caller's transaction that transaction is left as it
   was (only the locks are held until it ends). A batch one of whose ids is taken already
   is :class:`~bgcoor_core.DuplicateTaskError` rather than refused, as when the queue has
   room (one more lookup, on the refusal path only): that is how a retried enqueue whose
   first try committed unseen is told from a new one;
4. the backend's enqueue statement, unchanged; COMMIT.

Queues without a limit (and every enqueue when no limit is configured) take none of
this: the same single statement as before, no transaction. Retries, schedule fires,
workflow releases and dead letters put back are never limited (the work was accepted).

A caller's ``REPEATABLE READ`` or ``SERIALIZABLE`` transaction sees one snapshot, taken
at its first statement, before the lock was granted: its count would miss what producers
committed meanwhile (``SERIALIZABLE`` does not catch it either: the other producers'
transactions are ``READ COMMITTED``, outside its checks), so it is refused
(:class:`~bgcoor_core.ConfigurationError`) before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from bgcoor_core import Broker, ConfigurationError, DuplicateTaskError, Message, QueueFullError

from ._checks import INT_MAX
from ._database import Conn
from ._sql import LIVE, Statements, quote_ident

#: The waiting messages, as the ``messages_waiting`` index's predicate says it.
WAITING = "state IN ('ready', 'parked')"
#: Isolation levels whose statements each take a new snapshot (PostgreSQL runs READ
#: UNCOMMITTED as READ COMMITTED).
FRESH_SNAPSHOTS = ("read committed", "read uncommitted")


class QueueLimitStatements:
    """Built once per schema (see the module docstring)."""

    def __init__(self, sql: Statements) -> None:
        s = quote_ident(sql.schema)
        m, t = f"{s}.messages", f"{s}.tasks"
        #: What each lock is keyed by: the hash of this and the queue's name.
        self.key_prefix = f"bgcoor-queue-limit:{sql.schema}:"
        # $1 the lock keys, in queue order: a function scan returns them in array order,
        # so the locks are taken in that order
        self.lock = (
            "SELECT pg_advisory_xact_lock(hashtextextended(k.key, 0)) "
            "FROM unnest($1::text[]) AS k(key)"
        )
        # $1 the queues, $2 the most worth counting for each; and the transaction's
        # isolation level (see the module docstring)
        self.waiting = (
            "SELECT w.name, (SELECT count(*) FROM (SELECT 1 FROM "
            f"{m} m WHERE m.queue = w.name AND m.{WAITING} LIMIT w.cap) x), "
            "current_setting('transaction_isolation') "
            "FROM unnest($1::text[], $2::int[]) AS w(name, cap)"
        )
        # a refused batch's ids ($1) already taken: by a message (any state), or, for an
        # enqueue with records, by a live record (what the enqueue statement refuses)
        taken = f"SELECT m.id FROM {m} m WHERE m.id = ANY($1::text[])"
        self.taken_messages = f"{taken} LIMIT 1"
        self.taken = (
            f"{taken} UNION ALL SELECT t.id FROM {t} t WHERE t.id = ANY($1::text[]) "
            f"AND {LIVE} LIMIT 1"
        )


class PostgresQueueLimits:
    """The queue limits of one :class:`PostgresBackend` (``broker.queue_limits``, set
    when it is wired; see the module docstring)."""

    def __init__(self, broker: Broker, sql: Statements) -> None:
        self._broker = broker
        self.sql = QueueLimitStatements(sql)

    def limited(self, messages: Sequence[Message]) -> list[str]:
        """The queues of ``messages`` that have a limit, sorted (the lock order); none,
        without a look at the batch, when no limit is configured."""
        limits = self._broker.queue_limits
        if not limits:
            return []
        return sorted({m.queue for m in messages if m.queue in limits})

    async def refuse_if_full(
        self, conn: Conn, messages: Sequence[Message], *, records: bool
    ) -> None:
        """Lock and count the limited queues of ``messages`` on ``conn`` (inside its
        transaction), and raise :class:`~bgcoor_core.QueueFullError` when the batch does
        not fit (:class:`~bgcoor_core.DuplicateTaskError` when it could not be enqueued
        anyway: an id is taken; ``records``: by a record too). Nothing is written."""
        queues = self.limited(messages)
        if not queues:
            return
        limits = self._broker.queue_limits
        await conn.execute(self.sql.lock, [self.sql.key_prefix + q for q in queues])
        caps = [min(limits[q] + 1, INT_MAX) for q in queues]
        rows = await conn.fetch(self.sql.waiting, queues, caps)
        isolation = rows[0][2]
        if isolation not in FRESH_SNAPSHOTS:
            raise ConfigurationError(
                f"queue {queues[0]!r} has a queue limit, which an enqueue inside a "
                f"{isolation.upper()} transaction cannot check (its snapshot predates "
                "other producers' commits): enqueue into it in a READ COMMITTED "
                "transaction"
            )
        waiting = {name: count for name, count, _ in rows}
        try:
            self._broker.refuse_if_full(messages, waiting.__getitem__)
        except QueueFullError:
            statement = self.sql.taken if records else self.sql.taken_messages
            taken = await conn.fetchval(statement, [m.id for m in messages])
            if taken is not None:
                raise DuplicateTaskError(
                    f"task {taken} already exists; nothing was enqueued"
                ) from None
            raise
