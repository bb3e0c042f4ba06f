"""Rows written by something else: find them cheaply, read them defensively, say what is wrong.

A sound row costs nothing extra: the reserve's statement computes :data:`SOUND` (a few
``typeof`` comparisons on rows it reads anyway) and only a row that fails it, or text that
is not UTF-8 (the driver raises while fetching it), is re-read here column by column as
bytes. Such a row is reserved like any other and handed to the executor with a defect
(``corrupt message ...``), which dead-letters it: it costs that one task, never the queue.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ..._codec import printable
from ..._errors import BgcoorError
from ..._task import Task, validate_queue_name
from ._gates import parse as parse_gate

log = logging.getLogger("bgcoor.sqlite")

#: Largest value a counter may hold: one more must still fit SQLite's 64-bit integer.
COUNTER_MAX = 2**63 - 2

#: The storage class each column the reserve relies on must have, in the order checked.
MESSAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("text",),
    "body": ("blob",),
    "deliveries": ("integer",),
    "lost": ("integer",),
    "priority": ("integer",),
    "seq": ("integer",),
    "available_at": ("integer", "real"),
    "state": ("text",),
    "gate": ("null", "text"),  # checked for a gate it can enforce too (_gates.parse)
}
_COUNTERS = ("deliveries", "lost")

#: True for a row the fast path can take as it is (SQL, evaluated per candidate row).
SOUND = " AND ".join(
    [
        *(
            f"typeof({column}) IN ({', '.join(repr(kind) for kind in kinds)})"
            for column, kinds in MESSAGE_COLUMNS.items()
        ),
        *(f"{column} BETWEEN 0 AND {COUNTER_MAX}" for column in _COUNTERS),
        "state IN ('ready', 'reserved')",  # the schema's CHECK, unless it was switched off
    ]
)

#: Decodes a damaged row's body, if it can be decoded at all (``None`` when it cannot).
ReadBody = Callable[[bytes], Task | None]


def describe(kind: str, raw: bytes | None) -> str:
    """A stored value as a reason can show it: its storage class and a clipped rendering."""
    if raw is None or kind == "null":
        return "NULL"
    if kind == "blob":
        return f"a blob of {len(raw)} bytes"
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return f"text that is not UTF-8 ({printable(repr(raw), 60)})"
    return f"{kind} {printable(repr(text), 60)}"


def decode_text(raw: object) -> str | None:
    """A text column read as bytes (``CAST(... AS BLOB)``), or ``None`` if not UTF-8."""
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    return None if raw is None else str(raw)


def shown(raw: object) -> str:
    """An id read as bytes, printable whatever it holds (invalid UTF-8 escaped)."""
    if isinstance(raw, bytes):
        return printable(raw.decode(errors="backslashreplace"), 80)
    return printable(str(raw), 80)


def column_problem(column: str, kind: str, raw: bytes | None) -> str | None:
    """What is wrong with one column's stored value, or ``None`` if nothing."""
    if kind not in MESSAGE_COLUMNS[column]:
        expected = " or ".join(MESSAGE_COLUMNS[column])
        return f"column {column} holds {describe(kind, raw)}, not {expected}"
    if kind == "text" and decode_text(raw) is None:
        return f"column {column} holds {describe(kind, raw)}"
    if column in _COUNTERS and raw is not None and not 0 <= int(raw) <= COUNTER_MAX:
        return f"column {column} holds {int(raw)}, outside 0..{COUNTER_MAX}"
    if column == "state" and raw not in (b"ready", b"reserved"):
        return f"column state holds {describe(kind, raw)}, not ready or reserved"
    if column == "gate" and kind == "text" and parse_gate(decode_text(raw)) is None:
        return f"column gate holds {describe(kind, raw)}, which is no rate or concurrency limit"
    return None


def read_raw(conn: sqlite3.Connection, rowid: int) -> dict[str, tuple[str, bytes | None]]:
    """Each checked column of one message row as (storage class, bytes)."""
    columns = ", ".join(f"typeof({c}), CAST({c} AS BLOB)" for c in MESSAGE_COLUMNS)
    row = conn.execute(f"SELECT {columns} FROM messages WHERE rowid = ?", (rowid,)).fetchone()
    return {c: (row[2 * i], row[2 * i + 1]) for i, c in enumerate(MESSAGE_COLUMNS)}


def first_problem(raw: dict[str, tuple[str, bytes | None]]) -> str:
    for column, (kind, value) in raw.items():
        problem = column_problem(column, kind, value)
        if problem is not None:
            return problem
    return "the row cannot be read"  # SOUND said so; keep the reason honest if vague


def take(
    conn: sqlite3.Connection,
    rowid: int,
    queue: str,
    token: str,
    until: float,
    read_body: ReadBody | None,
) -> tuple[str, str]:
    """Reserve a damaged row under ``token`` (inside the reserve's transaction) so the
    executor can dead-letter it; return the id it is settled by and the defect.

    A row whose id is unreadable could never be settled by id: it gets the id its body
    names (when readable and free), else ``corrupt-<rowid>``; the reason keeps the old one.
    """
    raw = read_raw(conn, rowid)
    problem = first_problem(raw)
    message_id = decode_text(raw["id"][1]) if raw["id"][0] == "text" else None
    if message_id is None:
        message_id = _new_id(conn, rowid, raw["body"][1], read_body)
        was = "NULL" if raw["id"][1] is None else shown(raw["id"][1])
        problem = f"{problem} (the id was {was}; renamed {message_id})"
    conn.execute(
        "UPDATE messages SET id = ?, state = 'reserved', token = ?, available_at = ? "
        "WHERE rowid = ?",
        (message_id, token, until, rowid),
    )
    defect = f"corrupt message {printable(message_id, 80)} in SQLite table messages: {problem}"
    log.error("%s", defect)
    return message_id, defect


def _new_id(
    conn: sqlite3.Connection, rowid: int, body: bytes | None, read_body: ReadBody | None
) -> str:
    task = read_body(body) if read_body is not None and body is not None else None
    for candidate in (None if task is None else task.id, f"corrupt-{rowid}"):
        if (
            candidate
            and conn.execute("SELECT 1 FROM messages WHERE id = ?", (candidate,)).fetchone() is None
        ):
            return candidate
    return f"corrupt-{rowid}-{token_suffix(conn)}"


def token_suffix(conn: sqlite3.Connection) -> str:
    value: Any = conn.execute("SELECT hex(randomblob(6))").fetchone()[0]
    return str(value).lower()


# -- the sweep: messages no reserve can see ----------------------------------------------

#: Seconds between two sweeps of one backend object, made only while its reserve is idle.
SWEEP_SECONDS = 30.0
#: The queue that takes a stray message whose body names no valid queue either.
STRAY_QUEUE = "bgcoor-corrupt"

# No reserve names a queue that is not UTF-8 text, and a deadline that is no number sorts
# after every time: such rows would wait for ever. Finding them here, not in the reserve's
# statement, keeps its scan over leased and scheduled rows as cheap as it was.
_STRAY = (
    "FROM messages WHERE state != 'dead' AND (queue NOT IN (SELECT name FROM queues) "
    "OR typeof(available_at) NOT IN ('integer', 'real'))"
)
ANY_STRAY = f"SELECT 1 {_STRAY} LIMIT 1"
_STRAYS = (
    "SELECT rowid, typeof(queue), CAST(queue AS BLOB), typeof(available_at), "
    "CAST(available_at AS BLOB), typeof(id), CAST(id AS BLOB), CAST(body AS BLOB) "
    f"{_STRAY} LIMIT 100"
)


def sweep(conn: sqlite3.Connection, read_body: ReadBody) -> int:
    """Dead-letter the messages no reserve can see (inside a transaction): a queue that
    is no UTF-8 text, a deadline that is no number. Each goes to the dead letters of its
    queue (else the queue its body names, else :data:`STRAY_QUEUE`) with the reason, and
    the record its body names is marked ``dead``. A readable queue merely missing from
    the ``queues`` table is added there. Returns how many were dead-lettered."""
    swept = 0
    for row in conn.execute(_STRAYS).fetchall():
        rowid, q_kind, raw_queue, at_kind, raw_at, id_kind, raw_id, body = row
        queue = decode_text(raw_queue) if q_kind == "text" else None
        if queue is None:
            problem = f"column queue holds {describe(q_kind, raw_queue)}, a queue no worker names"
        elif at_kind not in MESSAGE_COLUMNS["available_at"]:
            problem = column_problem("available_at", at_kind, raw_at) or "available_at"
        else:
            conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (queue,))
            continue
        _dead_letter_stray(conn, rowid, queue, problem, id_kind, raw_id, body, read_body)
        swept += 1
    return swept


def _dead_letter_stray(
    conn: sqlite3.Connection,
    rowid: int,
    queue: str | None,
    problem: str,
    id_kind: str,
    raw_id: bytes | None,
    body: bytes | None,
    read_body: ReadBody,
) -> None:
    from . import _records  # the records module imports this one

    task = read_body(body) if body is not None else None
    home = queue or (task.queue if task is not None and _valid_queue(task.queue) else None)
    home = home or STRAY_QUEUE
    message_id = decode_text(raw_id) if id_kind == "text" else None
    if message_id is None:
        message_id = _new_id(conn, rowid, body, read_body)
    reason = (
        f"corrupt message {printable(message_id, 80)} in SQLite table messages: {problem} "
        f"(found by the sweep; dead letter of queue {home})"
    )
    log.error("%s", reason)
    conn.execute(
        "UPDATE messages SET id = ?, queue = ?, state = 'dead', token = NULL, reason = ?, "
        "dead_at = ? WHERE rowid = ?",
        (message_id, home, reason, time.time(), rowid),
    )
    conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (home,))
    if task is not None and task.id == message_id:
        _records.mark_dead(conn, task.id, task.queue, reason)


def _valid_queue(name: str) -> bool:
    try:
        validate_queue_name(name)
    except BgcoorError:
        return False
    return True
