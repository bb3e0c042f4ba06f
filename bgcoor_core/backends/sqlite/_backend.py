"""SQLiteBackend: broker and storage in one SQLite file (WAL), safe across processes.

Every change runs in a ``BEGIN IMMEDIATE`` transaction, so reserving is atomic across
processes: two workers can never hold the same task while its lease is current. Idle
consumers poll cheaply (a read without the write lock) every ``poll_interval`` seconds;
pushes made through the same backend object wake local consumers at once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..._broker import Broker, Capability, DeadLetter, Message, QueueStats, Reservation
from ..._codec import Codec
from ..._errors import ConfigurationError, DuplicateTaskError, StaleLeaseError
from ..._storage import Storage, check_page
from ..._task import Task, TaskStatus, validate_queue_name
from .._waiters import Waiters, wait_for_wake
from . import _records
from ._connection import Connection, transaction
from ._schema import SCHEMA_VERSION

Row = tuple[Any, ...]
Lines = list[str]  # the class below defines a method named ``list``


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
            f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////absolute.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigurationError(f"SQLite URL {url!r} names no file")
    try:
        options = SQLiteOptions.model_validate(dict(parse_qsl(parts.query)))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"invalid SQLite URL options in {url!r}: {problems}") from None
    parent = os.path.dirname(os.path.abspath(path))
    if path != ":memory:" and not os.path.isdir(parent):
        raise ConfigurationError(f"SQLite URL {url!r}: directory {parent!r} does not exist")
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
        self.wait_poll_max = self.options.poll_interval  # reads are cheap: poll as reserve does

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.db.path!r})"

    # -- broker: producing -------------------------------------------------------------

    async def push_messages(self, messages: Sequence[Message]) -> None:
        for message in messages:
            validate_queue_name(message.queue)
        await self.db.run(_insert_messages, messages)
        with self._waiters_lock:
            self._waiters.wake_all()

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
                remaining = give_up - time.monotonic()
                if rows or remaining <= 0:
                    break
                await wait_for_wake(future, min(remaining, self.options.poll_interval))
            finally:
                with self._waiters_lock:
                    self._waiters.discard(future)
        return [self._reservation(row) for row in rows]

    async def _take(self, queues: list[str], lease: float, limit: int) -> list[Row]:
        """Reserve in the connection thread; if our caller is cancelled meanwhile, the rows
        are handed straight back instead of waiting out their lease."""
        job = asyncio.ensure_future(self.db.run(_take_rows, queues, lease, limit))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._release_after_cancel)
            raise

    def _release_after_cancel(self, job: asyncio.Future[list[Row]]) -> None:
        if not job.cancelled() and job.exception() is None and job.result():
            self.db.submit(_release_rows, job.result())

    def _reservation(self, row: Row) -> Reservation:
        message_id, queue, body, deliveries, lost, token, started = row
        task, defect = self.decode(message_id, queue, bytes(body))
        return Reservation(task, token, deliveries, lost, defect, started)

    async def ack(self, reservation: Reservation) -> None:
        await self.db.run(
            _settle, reservation.task.id, reservation.token, "DELETE FROM messages", ()
        )

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
        with self._waiters_lock:
            self._waiters.wake_all()

    async def extend(self, reservation: Reservation, lease: float) -> None:
        sql = "UPDATE messages SET available_at = ?"
        await self.db.run(
            _settle, reservation.task.id, reservation.token, sql, (time.time() + lease,)
        )

    async def dead_letter(
        self, reservation: Reservation, reason: str, task: Task | None = None
    ) -> None:
        body = self.codec.encode(task) if task is not None else None
        sql = (
            "UPDATE messages SET state = 'dead', token = NULL, reason = ?, dead_at = ?, "
            "body = coalesce(?, body)"
        )
        await self.db.run(
            _settle, reservation.task.id, reservation.token, sql, (reason, time.time(), body)
        )

    async def dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        check_page(limit)
        rows = await self.db.run(
            _fetch,
            (
                "SELECT id, body, reason, dead_at FROM messages WHERE queue = ? AND state = 'dead' "
                "ORDER BY dead_at, id LIMIT ? OFFSET ?"
            ),
            (queue, limit, offset),
        )
        letters = []
        for message_id, body, reason, dead_at in rows:
            task, defect = self.decode(message_id, queue, bytes(body))
            letters.append(DeadLetter(message_id, queue, reason, None if defect else task, dead_at))
        return letters

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
                "coalesce(sum(state != 'dead' AND available_at <= ?), 0), "
                "coalesce(sum(state = 'ready' AND available_at > ?), 0), "
                "coalesce(sum(state = 'reserved' AND available_at > ?), 0), "
                "coalesce(sum(state = 'dead'), 0) "
                "FROM messages WHERE queue = ?"
            ),
            (now, now, now, queue),
        )
        ready, scheduled, reserved, dead = rows[0]
        return QueueStats(ready, scheduled, reserved, dead)

    async def purge(self, queue: str) -> int:
        return await self.db.run(
            _change, "DELETE FROM messages WHERE queue = ? AND state = 'ready'", (queue,)
        )

    async def queues(self) -> list[str]:
        rows = await self.db.run(_fetch, "SELECT name FROM queues ORDER BY name", ())
        return [name for (name,) in rows]

    # -- storage -----------------------------------------------------------------------

    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        await self.db.run(_records.save, task, ttl)

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
        return await self.db.run(_change, "DELETE FROM tasks WHERE expires_at <= ?", (time.time(),))

    # -- both: store the outcome and ack in one transaction ----------------------------

    def completes_into(self, storage: Storage) -> bool:
        return storage is self

    async def enqueue_atomically(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        for message in messages:
            validate_queue_name(message.queue)
        await self.db.run(_enqueue, tasks, messages)
        with self._waiters_lock:
            self._waiters.wake_all()

    async def save_many(self, tasks: Sequence[Task]) -> None:
        await self.db.run(_records.save_many, tasks)

    async def complete(self, reservation: Reservation, task: Task, *, ttl: float | None) -> None:
        await self.db.run(_complete, reservation.task.id, reservation.token, task, ttl)

    async def migrate(self) -> Lines:
        """The file is migrated when first opened; report what that did."""
        await self.db.run(_fetch, "SELECT 1", ())
        found = self.db.found_version or 0
        return [f"{self.db.path}: schema version {v + 1}" for v in range(found, SCHEMA_VERSION)]

    async def close(self) -> None:
        await self.db.close()


# -- statements, run on the connection's thread ----------------------------------------


def _insert_messages(conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
    with transaction(conn):
        _insert(conn, messages)


def _enqueue(conn: sqlite3.Connection, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
    with transaction(conn):
        _insert(conn, messages)  # first: a duplicate id is that, whatever its record says
        for task in tasks:
            _records.write(conn, task, None)


def _insert(conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
    seq = time.time_ns()
    rows = [
        (m.id, m.queue, m.priority, seq + i, m.body, m.eta or 0.0) for i, m in enumerate(messages)
    ]
    try:
        conn.executemany(
            "INSERT INTO messages (id, queue, priority, seq, body, state, available_at) "
            "VALUES (?, ?, ?, ?, ?, 'ready', ?)",
            rows,
        )
    except sqlite3.IntegrityError:
        raise DuplicateTaskError("a task with one of these ids is already in the broker") from None
    conn.executemany(
        "INSERT OR IGNORE INTO queues (name) VALUES (?)", {(m.queue,) for m in messages}
    )


_CANDIDATES = (
    "SELECT id, queue, body, deliveries, lost, state FROM messages "
    "WHERE queue = ? AND state != 'dead' AND available_at <= ? "
    "ORDER BY priority DESC, seq, id LIMIT ?"
)


def _take_rows(conn: sqlite3.Connection, queues: list[str], lease: float, limit: int) -> list[Row]:
    now = time.time()
    # Cheap check without the write lock: idle pollers must not serialise the writers.
    if not any(conn.execute(_CANDIDATES, (q, now, 1)).fetchone() for q in queues):
        return []
    taken: list[Row] = []
    with transaction(conn):
        now = time.time()
        for queue in queues:
            if len(taken) >= limit:
                break
            for message_id, q, body, deliveries, lost, state in conn.execute(
                _CANDIDATES, (queue, now, limit - len(taken))
            ).fetchall():
                token = os.urandom(12).hex()
                lost += state == "reserved"  # its lease ran out: the worker was lost
                conn.execute(
                    "UPDATE messages SET state = 'reserved', token = ?, available_at = ?, "
                    "deliveries = deliveries + 1, lost = ? WHERE id = ?",
                    (token, now + lease, lost, message_id),
                )
                started = _records.start(conn, message_id, token, now)
                taken.append((message_id, q, body, deliveries + 1, lost, token, started))
    return taken


def _release_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    with transaction(conn):
        conn.executemany(
            "UPDATE messages SET state = 'ready', token = NULL, available_at = 0, "
            "deliveries = deliveries - 1 WHERE id = ? AND token = ?",
            [(row[0], row[5]) for row in rows],
        )
        for row in rows:
            if row[6]:
                _records.unstart(conn, row[0], row[5])


def _settle(
    conn: sqlite3.Connection,
    message_id: str,
    token: str,
    sql: str,
    params: tuple[Any, ...],
    then: Callable[[sqlite3.Connection, str, str], None] | None = None,
) -> None:
    """Apply ``sql`` to the message only while ``token`` holds its lease, and ``then``
    (in the same transaction) if it did."""
    where = " WHERE id = ? AND token = ? AND state = 'reserved' AND available_at > ?"
    with transaction(conn):
        changed = conn.execute(sql + where, (*params, message_id, token, time.time())).rowcount
        if changed and then is not None:
            then(conn, message_id, token)
    if not changed:
        raise StaleLeaseError(f"task {message_id}: lease {token[:8]} is no longer held")


def _requeue_dead(conn: sqlite3.Connection, queue: str, ids: list[str] | None) -> list[str]:
    sql = (
        "UPDATE messages SET state = 'ready', available_at = 0, seq = ?, lost = 0, "
        "deliveries = 0, reason = NULL, dead_at = NULL WHERE queue = ? AND state = 'dead'"
    )
    params: list[Any] = [time.time_ns(), queue]
    if ids is not None:
        if not ids:
            return []
        sql += f" AND id IN ({', '.join('?' for _ in ids)})"
        params += ids
    with transaction(conn):
        rows = conn.execute(sql + " RETURNING id", params).fetchall()
    return [message_id for (message_id,) in rows]


def _complete(
    conn: sqlite3.Connection, message_id: str, token: str, task: Task, ttl: float | None
) -> None:
    with transaction(conn):
        held = conn.execute(
            "SELECT 1 FROM messages WHERE id = ? AND token = ? AND state = 'reserved' "
            "AND available_at > ?",
            (message_id, token, time.time()),
        ).fetchone()
        if held is None:
            raise StaleLeaseError(f"task {message_id}: lease {token[:8]} is no longer held")
        _records.write(conn, task, ttl)
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))


def _fetch(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _change(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    with transaction(conn):
        return conn.execute(sql, params).rowcount
