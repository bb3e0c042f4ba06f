"""SQLite: every column of the ``messages``, ``tasks`` and ``queues`` tables damaged one at a
time, for the victim's row, with a raw ``sqlite3`` connection (see ``corruption.py``).

A value the schema itself refuses (``NULL`` in a ``NOT NULL`` column) cannot be stored by
any client, so it is not listed; the ``state`` column's ``CHECK`` can be switched off by a
careless writer, so it is. The in-process twin, with Hypothesis drawing the garbage for
every column, is ``tests/test_sqlite_corruption.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3

from .corruption import Corruption
from .harness import Rig

NOT_UTF8 = "CAST(x'41ff42' AS TEXT)"  # "A", a lone 0xff byte, "B": text that is no UTF-8
_NOT_UTF8 = "text that is not UTF-8"
_BY_RESERVE = "the reserve overwrites it"
_BY_WORKER = "the worker's own write of the record replaces it"


def _path(rig: Rig) -> str:
    return rig.url.removeprefix("sqlite:///").split("?")[0]


def _write(path: str, sql: str, params: tuple[object, ...]) -> None:
    with sqlite3.connect(path, timeout=10) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        changed = conn.execute(sql, params).rowcount
    assert changed == 1, f"{sql!r} changed {changed} rows"


def _set(table: str, assignment: str, slug: str, kind: str) -> Corruption:
    """``UPDATE table SET assignment WHERE id = victim``; ``kind`` says what it stores."""
    column = assignment.split("=")[0].strip()

    async def apply(rig: Rig, victim: str) -> None:
        sql = f"UPDATE {table} SET {assignment} WHERE id = ?"
        await asyncio.to_thread(_write, _path(rig), sql, (victim,))

    name = f"{'msg' if table == 'messages' else 'rec'}-{column.replace('_', '-')}-{slug}"
    return Corruption("sqlite", name, f"{table}.{column} of the victim: {kind}", apply)


def _runs(corruption: Corruption, why: str) -> Corruption:
    """The backend repairs this damage (overwrites the column before it matters) and the
    victim runs once; ``why`` says why that is safe."""
    return Corruption(
        corruption.backend,
        corruption.name,
        f"{corruption.what} (runs: {why})",
        corruption.apply,
        victim_runs=True,
    )


async def _garbage_queue_name(rig: Rig, victim: str) -> None:
    sql = f"INSERT INTO queues (name) SELECT {NOT_UTF8} WHERE ? IS NOT NULL"
    await asyncio.to_thread(_write, _path(rig), sql, (victim,))


CORRUPTIONS: list[Corruption] = [
    # messages: what the reserve reads is checked (typeof, range, UTF-8) -> dead-lettered
    _set("messages", f"id = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    _set("messages", "id = CAST(id AS BLOB)", "blob", "its bytes as a blob"),
    _set("messages", "id = NULL", "null", "NULL (a TEXT PRIMARY KEY allows it)"),
    # rows no reserve can see (a queue no worker names, a deadline that is no number):
    # an idle reserve's sweep dead-letters them (at most every 30 s)
    _set("messages", f"queue = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    _set("messages", "queue = x'00'", "blob", "a blob"),
    _set("messages", "available_at = 'now'", "text", "text (sorts after every number)"),
    _set("messages", "available_at = x'00'", "blob", "a blob"),
    _set("messages", "body = CAST(body AS TEXT)", "text", "the body as TEXT, not BLOB"),
    _set("messages", f"body = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    _set("messages", "body = 42", "integer", "an integer"),
    _set("messages", "priority = 'urgent'", "text", "text"),
    _set("messages", "priority = 1.5", "real", "a real"),
    _set("messages", "seq = 'first'", "text", "text"),
    _set("messages", "deliveries = 'many'", "text", "text"),
    _set("messages", f"deliveries = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    _set("messages", "deliveries = 9223372036854775807", "max", "the 64-bit maximum"),
    _set("messages", "lost = 'x'", "text", "text"),
    _set("messages", "lost = -1", "negative", "-1"),
    _set("messages", "state = 'paused'", "unknown", "'paused' (its CHECK switched off)"),
    # messages: columns the reserve writes before anyone reads them
    _runs(_set("messages", f"token = {NOT_UTF8}", "not-utf8", _NOT_UTF8), _BY_RESERVE),
    _runs(_set("messages", "token = x'0102'", "blob", "a blob"), _BY_RESERVE),
    _runs(
        _set("messages", f"reason = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
        "a ready message's reason is never read; dead_letters() reads it as bytes",
    ),
    _runs(
        _set("messages", "dead_at = 'yesterday'", "text", "text"),
        "a ready message's dead_at is never read",
    ),
    # tasks: what the reserve and get read is checked -> dead-lettered, record marked dead
    _set("tasks", "status = 'paused'", "unknown", "'paused', no task status"),
    _set("tasks", f"status = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    _set("tasks", "status = CAST(status AS BLOB)", "blob", "its bytes as a blob"),
    _set("tasks", f"record = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    _set("tasks", f"before_start = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
    # tasks: columns the worker rewrites before it reads them
    _runs(_set("tasks", "record = 'not json'", "not-json", "text that is no JSON"), _BY_WORKER),
    _runs(_set("tasks", """record = '{"id": 7}'""", "not-a-task", "JSON, no task"), _BY_WORKER),
    _runs(_set("tasks", f"name = {NOT_UTF8}", "not-utf8", _NOT_UTF8), _BY_WORKER),
    _runs(_set("tasks", f"queue = {NOT_UTF8}", "not-utf8", _NOT_UTF8), _BY_WORKER),
    _runs(_set("tasks", f"lease_token = {NOT_UTF8}", "not-utf8", _NOT_UTF8), _BY_RESERVE),
    _runs(
        _set("tasks", "expires_at = 'never'", "text", "text"),
        "text sorts after every number, so the record stays live",
    ),
    _runs(
        _set("tasks", f"id = {NOT_UTF8}", "not-utf8", _NOT_UTF8),
        "the record lost the victim's id: the worker stores a new one; "
        "list() skips the stray row with a warning",
    ),
    # queues: a name that is not UTF-8 is skipped by queues() (bgcoor status)
    Corruption(
        "sqlite",
        "queues-name-not-utf8",
        "a queues row whose name is text that is not UTF-8 (skipped with a warning)",
        _garbage_queue_name,
        victim_runs=True,
        shared="the queues table, which every queue's listing reads",
    ),
]
