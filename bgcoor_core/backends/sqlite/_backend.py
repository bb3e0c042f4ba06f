"""SQLiteBackend: broker and storage in one SQLite file (WAL), safe across processes.

Every change runs in a ``BEGIN IMMEDIATE`` transaction, so reserving is atomic across
processes: two workers can never hold the same task while its lease is current, nor both
take a rate or concurrency limit's last slot (decided in the take's transaction, see
:mod:`._gates`), and two producers never both take a limited queue's last place (counted
in the enqueue's transaction, see :mod:`._queue_limits`). Idle consumers poll cheaply (a
read without the write lock) every ``poll_interval`` seconds as a safety net: pushes, and
settles that free a limit's slot for a parked message, wake consumers at once, those of
this backend object directly and those of other processes with a datagram on a local
socket (see :mod:`._wakes`); outcomes wake callers waiting for a result the same way.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..._backend_registry import redact
from ..._broker import Broker, Capability, DeadLetter, Message, QueueStats, Reservation
from ..._codec import Codec
from ..._errors import (
    ConfigurationError,
    CorruptRecordError,
    DuplicateTaskError,
    StaleLeaseError,
)
from ..._schedules import Fire, FireOutcome, ScheduleDefinition, ScheduleEntry
from ..._storage import Storage, check_page, pause_within
from ..._task import Task, TaskStatus, validate_queue_name
from ...kit import placeholder, shielded_take
from .._waiters import Waiters, wait_for_wake
from . import _defects, _gates, _queue_limits, _records, _schedules
from ._connection import Connection, transaction
from ._schema import SCHEMA_VERSION
from ._uniques import SQLiteUniques
from ._wakes import Wakes
from ._workflows import SQLiteWorkflows

log = logging.getLogger("bgcoor.sqlite")
Row = tuple[Any, ...]
Lines = list[str]  # the class below defines a method named ``list``
Entries = list[ScheduleEntry]
Outcomes = list[FireOutcome]


class SQLiteOptions(BaseModel):
    """Options in the URL query string, e.g. ``sqlite:///jobs.db?poll_interval=0.05``."""

    model_config = ConfigDict(extra="forbid")

    busy_timeout: float = Field(default=10.0, gt=0)
    poll_interval: float = Field(default=0.01, gt=0)
    synchronous: Literal["normal", "full"] = "normal"


def parse_sqlite_url(url: str) -> tuple[str, SQLiteOptions]:
    """``sqlite:///rel/path.db`` (relative), ``sqlite:////abs/path.db``, ``sqlite:///:memory:``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ConfigurationError(
            f"invalid SQLite URL {redact(url)!r}: "
            "use sqlite:///relative.db or sqlite:////absolute.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigurationError(f"SQLite URL {redact(url)!r} names no file")
    try:
        options = SQLiteOptions.model_validate(dict(parse_qsl(parts.query)))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigurationError(
            f"invalid SQLite URL options in {redact(url)!r}: {problems}"
        ) from None
    parent = os.path.dirname(os.path.abspath(path))
    if path != ":memory:" and not os.path.isdir(parent):
        raise ConfigurationError(f"SQLite URL {redact(url)!r}: directory {parent!r} does not exist")
    return path, options


class SQLiteBackend(Broker, Storage):
    """Broker and storage over one SQLite database file."""

    capabilities = frozenset(Capability)

    def __init__(self, path: str, codec: Codec, options: SQLiteOptions | None = None) -> None:
        Broker.__init__(self, codec)
        self.options = options or SQLiteOptions()
        self.db = Connection(
            path, busy_timeout=self.options.busy_timeout, synchronous=self.options.synchronous
        )
        self._waiters = Waiters()
        self._waiters_lock = threading.Lock()
        self._wakes = Wakes(path, self._wake_local)
        self._next_sweep = 0.0  # monotonic time of the next idle sweep for stray messages

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.db.path!r})"

    # -- broker: producing -------------------------------------------------------------

    async def push_messages(self, messages: Sequence[Message]) -> None:
        for message in messages:
            validate_queue_name(message.queue)
        await self.db.run(self._push_limited, messages)
        self._wake_consumers()

    # -- broker: consuming -------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, lease: float, limit: int = 1, timeout: float = 0.0
    ) -> list[Reservation]:
        for queue in queues:
            validate_queue_name(queue)
        give_up = time.monotonic() + timeout
        while True:
            with self._waiters_lock:
                future = self._waiters.add()
            try:
                rows = await self._take(list(queues), lease, limit)
                if rows:
                    break
                await self._sweep_when_due()
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    break
                self._wakes.listen()  # other processes' pushes wake this wait
                await wait_for_wake(future, min(remaining, self.options.poll_interval))
            finally:
                with self._waiters_lock:
                    self._waiters.discard(future)
        return [self._reservation(row) for row in rows]

    async def _take(self, queues: list[str], lease: float, limit: int) -> list[Row]:
        """Reserve in the connection thread; if our caller is cancelled meanwhile, the rows
        are handed straight back instead of waiting out their lease."""
        take = self.db.run(_take_rows, queues, lease, limit, self._read_body)
        return await shielded_take(take, self._release)

    def _release(self, rows: list[Row]) -> None:
        """Hand back what a cancelled reserve took."""
        if rows:
            self.db.submit(_release_rows, rows)

    def _reservation(self, row: Row) -> Reservation:
        message_id, queue, body, deliveries, lost, token, started, defect = row
        if defect is not None:  # the backend's own row or record is damaged
            task = placeholder(message_id, queue)
            return Reservation(task, token, deliveries, lost, defect)
        task, defect = self.decode(message_id, queue, body)
        return Reservation(task, token, deliveries, lost, defect, started is not None, started)

    def _read_body(self, body: bytes) -> Task | None:
        """A damaged row's body as a task, if it can be decoded at all (to name the
        task and queue it was for)."""
        try:
            return self.codec.decode(body)
        except Exception:  # any failure: the row is named after its rowid instead
            return None

    async def _sweep_when_due(self) -> None:
        """While idle, now and then: dead-letter messages that sit in a queue no worker
        can name (see :func:`_defects.sweep`), and make ready the parked messages whose
        key no live lease holds (:func:`_gates.free_stranded`). Never on a reserve that
        found work."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + _defects.SWEEP_SECONDS
        await self.db.run(_sweep, self._read_body)

    async def ack(self, reservation: Reservation) -> None:
        freed = await self.db.run(
            _settle, reservation.task.id, reservation.token, "DELETE FROM messages", ()
        )
        if freed:
            self._wake_consumers()

    async def nack(
        self, reservation: Reservation, *, delay: float = 0.0, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        sql = (
            "UPDATE messages SET state = 'ready', token = NULL, available_at = ?, seq = ?, "
            "body = coalesce(?, body)"
        )
        params = (time.time() + max(delay, 0.0), time.time_ns(), body)
        await self.db.run(
            _settle, reservation.task.id, reservation.token, sql, params, _records.unstart
        )
        self._wake_consumers()

    async def extend(self, reservation: Reservation, lease: float) -> None:
        await self.db.run(_extend, reservation.task.id, reservation.token, time.time() + lease)

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        sql = (
            "UPDATE messages SET state = 'dead', token = NULL, reason = ?, dead_at = ?, "
            "body = coalesce(?, body)"
        )
        freed = await self.db.run(
            _settle, reservation.task.id, reservation.token, sql, (reason, time.time(), body)
        )
        if freed:
            self._wake_consumers()

    async def dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        check_page(limit)
        rows = await self.db.run(_fetch, _DEAD_LETTERS, (queue, limit, offset))
        return [self._dead_letter(queue, *row) for row in rows]

    def _dead_letter(
        self, queue: str, raw_id: bytes, body_kind: str, body: bytes, reason: Any, dead_at: float
    ) -> DeadLetter:
        """One dead letter, read as bytes: a damaged row is listed too (without a task)."""
        message_id = _defects.decode_text(raw_id)
        task = None
        if message_id is not None and body_kind == "blob":
            decoded, defect = self.decode(message_id, queue, body)
            task = None if defect else decoded
        why = "" if reason is None else _defects.decode_text(reason) or _defects.shown(reason)
        return DeadLetter(message_id or _defects.shown(raw_id), queue, why, task, dead_at)

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        return await self.db.run(_requeue_dead, queue, None if ids is None else list(ids))

    async def purge_dead(self, queue: str) -> int:
        return await self.db.run(
            _change, "DELETE FROM messages WHERE queue = ? AND state = 'dead'", (queue,)
        )

    # -- broker: inspecting ------------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        now = time.time()
        rows = await self.db.run(
            _fetch,
            (
                "SELECT "
                "coalesce(sum(state != 'dead' AND slot_wait = 0 AND available_at <= ?), 0), "
                # parked for a concurrency slot: scheduled, as a limit holds it back
                "coalesce(sum(state = 'ready' AND (slot_wait != 0 OR available_at > ?)), 0), "
                "coalesce(sum(state = 'reserved' AND available_at > ?), 0), "
                "coalesce(sum(state = 'dead'), 0) "
                "FROM messages WHERE queue = ?"
            ),
            (now, now, now, queue),
        )
        ready, scheduled, reserved, dead = rows[0]
        return QueueStats(ready, scheduled, reserved, dead)

    async def purge(self, queue: str) -> int:
        """Every message not leased, parked ones included (they are ``ready`` rows)."""
        return await self.db.run(
            _change, "DELETE FROM messages WHERE queue = ? AND state = 'ready'", (queue,)
        )

    async def queues(self) -> list[str]:
        rows = await self.db.run(_fetch, "SELECT CAST(name AS BLOB) FROM queues ORDER BY name", ())
        names = []
        for (raw,) in rows:
            name = _defects.decode_text(raw)
            if name is None:  # written by something else: no queue can be named so
                log.warning("queues table: skipped a name that is not UTF-8: %r", raw)
            else:
                names.append(name)
        return names

    # -- storage -----------------------------------------------------------------------

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        await self.db.run(_records.save, task, ttl)
        if task.status.is_final:
            self._wake_consumers()  # and whoever waits for its result

    async def wait(self, task_id: str, *, timeout: float | None) -> Task:
        """Look at the record each time an outcome is stored in any process using the
        file (a wake-up, see :mod:`._wakes`), and every ``poll_interval`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wakes.listen()
        while True:
            with self._waiters_lock:
                future = self._waiters.add()
            try:
                task = await self.get(task_id)
                if task is not None and task.status.is_final:
                    return task
                pause = pause_within(deadline, self.options.poll_interval, task_id, timeout)
                await wait_for_wake(future, pause)
            finally:
                with self._waiters_lock:
                    self._waiters.discard(future)

    async def get(self, task_id: str) -> Task | None:
        return await self.db.run(_records.get, task_id)

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Task]:
        check_page(limit)
        return await self.db.run(_records.select, status, name, queue, limit, after)

    async def counts(self) -> dict[TaskStatus, int]:
        return await self.db.run(_records.counts)

    async def delete_expired(self) -> int:
        return await self.db.run(_delete_expired, time.time())

    # -- both: store the outcome and ack in one transaction ----------------------------

    def shares_store_with(self, storage: Storage) -> bool:
        return storage is self

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        for message in messages:
            validate_queue_name(message.queue)
        await self.db.run(self._enqueue_limited, tasks, messages)
        self._wake_consumers()

    async def save_many(self, tasks: Sequence[Task]) -> None:
        await self.db.run(_records.save_many, tasks)

    async def complete(self, reservation: Reservation, task: Task, *, ttl: float | None) -> None:
        await self.db.run(_complete, reservation.task.id, reservation.token, task, ttl)
        self._wake_consumers()  # a freed limit slot, a waiter for the result

    # -- schedules (periodic tasks): fired in the enqueue's own transaction ------------

    async def put_schedules(self, definitions: Sequence[ScheduleDefinition]) -> None:
        await self.db.run(_schedules.put, definitions)

    async def get_schedules(self) -> Entries:
        return await self.db.run(_schedules.get_all)

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self.db.run(_schedules.delete, schedule_id)

    async def set_schedule_paused(self, schedule_id: str, paused: bool) -> bool:
        return await self.db.run(_schedules.set_paused, schedule_id, paused)

    async def fire(self, requests: Sequence[Fire]) -> Outcomes:
        for request in requests:
            if request.message is not None:
                validate_queue_name(request.message.queue)
        outcomes = await self.db.run(_schedules.fire, requests, _store_new)
        if FireOutcome.FIRED in outcomes:
            self._wake_consumers()
        return outcomes

    # -- workflows: each member's outcome steps its workflow in the same transaction ---

    def unique_store(self, storage: Storage) -> SQLiteUniques | None:
        """Unique keys on this file, when ``storage`` is this backend too."""
        if not self.shares_store_with(storage):
            return None
        return SQLiteUniques(self.db, self._store_limited, self._wake_consumers)

    def workflow_store(self, storage: Storage) -> SQLiteWorkflows | None:
        """Workflows on this file, when ``storage`` is this backend too."""
        if not self.shares_store_with(storage):
            return None
        return SQLiteWorkflows(self.db, _insert, _complete_held, self._wake_consumers)

    # -- a producer's enqueue: refused whole past a queue limit (see _queue_limits) ----

    def _push_limited(self, conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
        """``push_messages``' step, on the connection's thread."""
        with transaction(conn):
            _insert(conn, messages)
            _queue_limits.refuse_if_full(self, conn, messages)

    def _enqueue_limited(
        self, conn: sqlite3.Connection, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        """``enqueue_atomically``'s step, on the connection's thread."""
        with transaction(conn):
            self._store_limited(conn, tasks, messages)

    def _store_limited(
        self, conn: sqlite3.Connection, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        """A producer's writes (the atomic and the unique-key enqueue: only the tasks it
        enqueues), inside its transaction, then the queue limits: a refusal rolls the
        transaction back, and a duplicate id was refused as that first."""
        _store_new(conn, tasks, messages)
        _queue_limits.refuse_if_full(self, conn, messages)

    def _wake_consumers(self) -> None:
        """Wake the consumers and result waiters of every process using the file."""
        self._wake_local()
        self._wakes.notify()

    def _wake_local(self) -> None:
        with self._waiters_lock:
            self._waiters.wake_all()

    async def migrate(self) -> Lines:
        """The file is migrated when first opened; report what that did."""
        await self.db.run(_fetch, "SELECT 1", ())
        found = self.db.found_version or 0
        return [f"{self.db.path}: schema version {v + 1}" for v in range(found, SCHEMA_VERSION)]

    async def close(self) -> None:
        self._wakes.close()
        await self.db.close()


# -- statements, run on the connection's thread ----------------------------------------


def _store_new(
    conn: sqlite3.Connection, tasks: Sequence[Task], messages: Sequence[Message]
) -> None:
    """An enqueue's writes, inside the caller's transaction (also a fired schedule's,
    which no queue limit refuses: see :meth:`SQLiteBackend._store_limited`)."""
    _insert(conn, messages)  # first: a duplicate id is that, whatever its record says
    _records.insert_new(conn, tasks, messages)  # any record refuses the batch (rolled back)


def _insert(conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
    seq = time.time_ns()
    rows = [
        (m.id, m.queue, m.priority, seq + i, m.body, m.eta or 0.0, m.gate)
        for i, m in enumerate(messages)
    ]
    try:
        conn.executemany(
            "INSERT INTO messages (id, queue, priority, seq, body, state, available_at, gate) "
            "VALUES (?, ?, ?, ?, ?, 'ready', ?, ?)",
            rows,
        )
    except sqlite3.IntegrityError:
        raise _duplicate_message(conn, [m.id for m in messages]) from None
    conn.executemany(
        "INSERT OR IGNORE INTO queues (name) VALUES (?)", {(m.queue,) for m in messages}
    )


def _duplicate_message(conn: sqlite3.Connection, ids: list[str]) -> DuplicateTaskError:
    """Name the first id of a refused batch that is already a message, and its state."""
    seen: set[str] = set()
    for message_id in ids:
        if message_id in seen:
            return DuplicateTaskError(f"task {message_id} appears twice in one enqueue")
        seen.add(message_id)
        row = conn.execute(
            "SELECT CAST(state AS BLOB) FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is not None:
            state = _defects.decode_text(row[0]) or _defects.shown(row[0])
            return DuplicateTaskError(
                f"task {message_id} is already in the broker (message {state}): "
                "a new task cannot reuse its id"
            )
    return DuplicateTaskError("a task with one of these ids is already in the broker")


# read as bytes: a dead letter written by something else is listed, not fatal to the page
_DEAD_LETTERS = (
    "SELECT CAST(id AS BLOB), typeof(body), CAST(body AS BLOB), CAST(reason AS BLOB), "
    "CASE WHEN typeof(dead_at) IN ('integer', 'real') THEN dead_at ELSE 0.0 END "
    "FROM messages WHERE queue = ? AND state = 'dead' ORDER BY dead_at, id LIMIT ? OFFSET ?"
)
_WHERE = (
    "WHERE queue = ? AND state != 'dead' AND slot_wait = 0 AND available_at <= ? "
    "ORDER BY priority DESC, seq, id LIMIT ?"
)
_ANY_CANDIDATE = f"SELECT 1 FROM messages {_WHERE}"
_CANDIDATES = (
    f"SELECT rowid, id, body, deliveries, lost, state, {_defects.SOUND}, gate, admitted != 0 "
    "FROM messages "
)
_CANDIDATE_IDS = f"SELECT rowid FROM messages {_WHERE}"


def _take_rows(
    conn: sqlite3.Connection,
    queues: list[str],
    lease: float,
    limit: int,
    read_body: _defects.ReadBody | None = None,
) -> list[Row]:
    now = time.time()
    # Cheap check without the write lock: idle pollers must not serialise the writers.
    if not any(conn.execute(_ANY_CANDIDATE, (q, now, 1)).fetchone() for q in queues):
        return []
    taken: list[Row] = []
    with transaction(conn):
        now = time.time()
        for queue in queues:
            while len(taken) < limit:
                wanted = limit - len(taken)
                candidates = _candidates(conn, queue, now, wanted)
                rows = [_take_one(conn, c, queue, now + lease, now, read_body) for c in candidates]
                taken += [row for row in rows if row is not None]
                # a message held back by its gate left the candidates: look past it
                if len(candidates) < wanted or None not in rows:
                    break
    return taken


def _candidates(conn: sqlite3.Connection, queue: str, now: float, limit: int) -> list[Row]:
    try:
        return conn.execute(_CANDIDATES + _WHERE, (queue, now, limit)).fetchall()
    except sqlite3.OperationalError:
        pass  # text that is not UTF-8 in some row: read the rows one at a time instead
    rows: list[Row] = []
    for (rowid,) in conn.execute(_CANDIDATE_IDS, (queue, now, limit)).fetchall():
        try:
            rows.extend(conn.execute(_CANDIDATES + "WHERE rowid = ?", (rowid,)).fetchall())
        except sqlite3.OperationalError:
            rows.append((rowid, None, None, 0, 0, None, 0, None, 0))  # unsound: read as bytes
    return rows


def _take_one(
    conn: sqlite3.Connection,
    candidate: Row,
    queue: str,
    until: float,
    now: float,
    read_body: _defects.ReadBody | None,
) -> Row | None:
    """Reserve one candidate row; the reservation row (see ``_reservation``), or ``None``
    when its gate held it back (parked or scheduled for its rate slot, see ``_gates``)."""
    rowid, message_id, body, deliveries, lost, state, sound, gate_text, admitted = candidate
    gate = None if gate_text is None or not sound else _gates.parse(gate_text)
    if gate_text is not None and gate is None:
        sound = False  # a gate it cannot enforce: a defect, like any damaged column
    token = os.urandom(12).hex()
    if not sound:
        message_id, defect = _defects.take(conn, rowid, queue, token, until, read_body)
        return (message_id, queue, b"", 1, 0, token, None, defect)
    was_lost = state == "reserved"  # its lease ran out: the worker was lost
    lost += was_lost
    if gate is not None and not _gates.passes(
        conn, rowid, gate, lost=was_lost, lost_count=lost, admitted=bool(admitted), now=now
    ):
        return None
    conn.execute(
        "UPDATE messages SET state = 'reserved', token = ?, available_at = ?, "
        "deliveries = deliveries + 1, lost = ?, slot_key = ?, admitted = 0 WHERE rowid = ?",
        (token, until, lost, _gates.slot_of(gate), rowid),
    )
    try:
        started = _records.start(conn, message_id, token, now)
    except CorruptRecordError as exc:  # the message is sound, its record is not
        log.error("%s", exc)
        return (message_id, queue, body, deliveries + 1, lost, token, None, str(exc))
    return (message_id, queue, body, deliveries + 1, lost, token, started, None)


def _release_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    # a damaged row's counters were not counted up by the reserve (see _take_one); a gated
    # one keeps the rate slot it was charged for (admitted) and frees its concurrency slot
    undo = "deliveries = deliveries - (? IS NULL), admitted = gate IS NOT NULL"
    with transaction(conn):
        for row in rows:
            held = conn.execute(
                f"UPDATE messages SET state = 'ready', token = NULL, available_at = 0, {undo} "
                "WHERE id = ? AND token = ? RETURNING CAST(slot_key AS BLOB)",
                (row[7] if len(row) > 7 else None, row[0], row[5]),
            ).fetchall()
            if held:
                _gates.release(conn, held[0][0])
            if row[6]:
                _records.unstart(conn, row[0], row[5])


def _settle(
    conn: sqlite3.Connection,
    message_id: str,
    token: str,
    sql: str,
    params: tuple[Any, ...],
    then: Callable[[sqlite3.Connection, str, str], None] | None = None,
    releases: bool = True,
) -> bool:
    """Apply ``sql`` to the message only while ``token`` holds its lease, and ``then``
    (in the same transaction) if it did. ``releases``: the message stops holding its
    concurrency slot (every settle but a lease extension); True if that made a parked
    message ready."""
    where = (
        " WHERE id = ? AND token = ? AND state = 'reserved' AND available_at > ? "
        "RETURNING CAST(slot_key AS BLOB)"
    )
    with transaction(conn):
        held = conn.execute(sql + where, (*params, message_id, token, time.time())).fetchall()
        if held and then is not None:
            then(conn, message_id, token)
        freed = bool(held) and releases and _gates.release(conn, held[0][0])
    if not held:
        raise StaleLeaseError(f"task {message_id}: lease {token[:8]} is no longer held")
    return freed


def _extend(conn: sqlite3.Connection, message_id: str, token: str, until: float) -> None:
    """A longer lease while ``token`` holds it: the message keeps its concurrency slot."""
    sql = "UPDATE messages SET available_at = ?"
    _settle(conn, message_id, token, sql, (until,), releases=False)


def _requeue_dead(conn: sqlite3.Connection, queue: str, ids: list[str] | None) -> list[str]:
    sql = (
        "UPDATE messages SET state = 'ready', available_at = 0, seq = ?, lost = 0, "
        "deliveries = 0, reason = NULL, dead_at = NULL, slot_wait = 0, admitted = 0 "
        "WHERE queue = ? AND state = 'dead'"
    )
    params: list[Any] = [time.time_ns(), queue]
    if ids is not None:
        if not ids:
            return []
        sql += f" AND id IN ({', '.join('?' for _ in ids)})"
        params += ids
    with transaction(conn):
        rows = conn.execute(sql + " RETURNING CAST(id AS BLOB)", params).fetchall()
    return [_defects.decode_text(raw) or _defects.shown(raw) for (raw,) in rows]


def _complete(
    conn: sqlite3.Connection, message_id: str, token: str, task: Task, ttl: float | None
) -> bool:
    with transaction(conn):
        return _complete_held(conn, message_id, token, task, ttl)


def _complete_held(
    conn: sqlite3.Connection, message_id: str, token: str, task: Task, ttl: float | None
) -> bool:
    """Store the outcome and ack, inside the caller's transaction, while ``token`` holds
    the lease; :class:`StaleLeaseError` before any change otherwise. True if the freed
    concurrency slot made a parked message ready."""
    held = conn.execute(
        "SELECT 1 FROM messages WHERE id = ? AND token = ? AND state = 'reserved' "
        "AND available_at > ?",
        (message_id, token, time.time()),
    ).fetchone()
    if held is None:
        raise StaleLeaseError(f"task {message_id}: lease {token[:8]} is no longer held")
    _records.write(conn, task, ttl)
    [(key,)] = conn.execute(
        "DELETE FROM messages WHERE id = ? RETURNING CAST(slot_key AS BLOB)", (message_id,)
    ).fetchall()
    return _gates.release(conn, key)


def _sweep(conn: sqlite3.Connection, read_body: _defects.ReadBody) -> int:
    """Dead-letter stray messages (see :func:`_defects.sweep`) and make ready the parked
    ones no settle will free (:func:`_gates.free_stranded`); the usual case, neither, is
    found by two reads without the write lock."""
    now = time.time()
    stray = conn.execute(_defects.ANY_STRAY).fetchone() is not None
    stranded = conn.execute(_gates.ANY_STRANDED, (now,)).fetchone() is not None
    if not stray and not stranded:
        return 0
    with transaction(conn):
        if stranded:
            _gates.free_stranded(conn, time.time())
        return _defects.sweep(conn, read_body) if stray else 0


def _fetch(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _delete_expired(conn: sqlite3.Connection, now: float) -> int:
    """Expired records, ended workflows past their expiry with their rows, and the rate
    state of idle keys."""
    with transaction(conn):
        ended = "SELECT id FROM workflows WHERE expires_at <= ?"
        for table in ("workflow_nodes", "parked"):
            conn.execute(f"DELETE FROM {table} WHERE workflow_id IN ({ended})", (now,))
        conn.execute(f"DELETE FROM workflow_graphs WHERE id IN ({ended})", (now,))
        conn.execute("DELETE FROM workflows WHERE expires_at <= ?", (now,))
        _gates.forget_idle(conn, now)
        return conn.execute("DELETE FROM tasks WHERE expires_at <= ?", (now,)).rowcount


def _change(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    with transaction(conn):
        return conn.execute(sql, params).rowcount
