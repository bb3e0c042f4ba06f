"""Task records: batched writes with a verdict per row, and decoding.

A record is stored as the task's JSON (``json``, kept verbatim so numbers round-trip
exactly) beside the columns that the indexes and the write rule need.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bgcoor_core import (
    CorruptRecordError,
    InvalidTransitionError,
    StaleLeaseError,
    Task,
    TaskStatus,
)
from bgcoor_core.kit import check_transition, decode_record

from ._database import Conn
from ._sql import Statements, numbers

log = logging.getLogger("bgcoor.postgres")


@dataclass(frozen=True, slots=True)
class Write:
    """One record to store; with ``token`` only while that lease holds (outcome + ack)."""

    task: Task
    ttl: float | None
    token: str | None = None


def _columns(writes: Sequence[Write]) -> list[list[Any]]:
    tasks = [w.task for w in writes]
    return [
        [t.id for t in tasks],
        [t.name for t in tasks],
        [t.queue for t in tasks],
        [t.status.value for t in tasks],
        [t.lease_token for t in tasks],
        numbers(w.ttl for w in writes),
        [t.model_dump_json() for t in tasks],
    ]


async def write(
    conn: Conn, sql: Statements, writes: Sequence[Write], *, complete: bool
) -> list[BaseException | None]:
    """Run one save (or complete) statement; per write ``None`` or the error to raise.

    A row the statement refused is judged again in Python from the record it saw, which
    yields the precise error; a refusal that the snapshot cannot explain (another writer
    got in between) is retried once on its own.
    """
    verdicts = await _run(conn, sql, writes, complete=complete)
    retry = [w for w in writes if verdicts[w.task.id] is _AGAIN]
    if retry:
        verdicts.update(await _run(conn, sql, retry, complete=complete))
    results: list[BaseException | None] = []
    for w in writes:
        verdict = verdicts[w.task.id]
        results.append(
            InvalidTransitionError(f"task {w.task.id}: record changed concurrently; not saved")
            if verdict is _AGAIN
            else verdict
        )
    return results


class _Again(Exception):
    pass


_AGAIN = _Again()


async def _run(
    conn: Conn, sql: Statements, writes: Sequence[Write], *, complete: bool
) -> dict[str, BaseException | None]:
    columns = _columns(writes)
    if complete:
        rows = await conn.fetch(sql.complete, *columns, [w.token for w in writes])
    else:
        running = all(w.task.status is TaskStatus.RUNNING for w in writes)
        rows = await conn.fetch(sql.save_running if running else sql.save, *columns)
    by_id = {w.task.id: w for w in writes}
    verdicts: dict[str, BaseException | None] = {}
    for row in rows:  # (complete has a sixth column: the slots it freed)
        task_id, saved, held, old_status, old_token = row[:5]
        task = by_id[task_id].task
        if saved:
            verdicts[task_id] = None
        elif complete and not held:
            token = by_id[task_id].token or ""
            verdicts[task_id] = StaleLeaseError(
                f"task {task_id}: lease {token[:8]} is no longer held"
            )
        else:
            verdicts[task_id] = _refusal(task, old_status, old_token)
    return verdicts


def _refusal(task: Task, old_status: str | None, old_token: str | None) -> BaseException:
    if old_status is None:
        return _AGAIN
    try:
        # the stored status as it is: one naming no status may only become dead
        check_transition(task.id, old_status, old_token, task.status, task.lease_token)
    except (StaleLeaseError, InvalidTransitionError) as exc:
        return exc
    return _AGAIN


def decode(
    task_id: str,
    record: str,
    started_at: float | None = None,
    token: str | None = None,
    status: str | None = None,
) -> Task:
    """A record from its JSON and, if a reserve marked it running (``started_at``, epoch
    seconds), as that attempt shows it: running under ``token``.

    Anything that does not add up (the status column names no status, the JSON is not a
    task or is another task's, the start time is out of range) is
    :class:`CorruptRecordError` naming the id and the problem.
    """
    task = decode_record(task_id, record, status=status)
    if started_at is None or token is None:
        return task
    try:
        when = datetime.fromtimestamp(started_at, UTC)
    except (ValueError, OverflowError):
        raise CorruptRecordError(
            f"corrupt record: task {task_id} has started_at out of range ({started_at})"
        ) from None
    return task.started(token, when)


def decode_page(rows: Sequence[Any]) -> tuple[list[Task], int]:
    """The records of a :meth:`Storage.list` page that decode, and how many did not
    (each logged with its id): one corrupt record must not fail every page it is on."""
    tasks = []
    skipped = 0
    for row in rows:
        try:
            tasks.append(decode(*row))
        except CorruptRecordError as exc:
            log.warning("list: skipped a record: %s", exc)
            skipped += 1
    return tasks, skipped


def list_statement(sql: Statements, filters: dict[str, Any], after: str | None) -> str:
    """``SELECT`` for :meth:`Storage.list`: one clause per given filter, so each variant
    is a plain prepared statement the planner serves from the matching index."""
    clauses = [sql.list_prefix]
    for number, column in enumerate(filters, start=1):
        clauses.append(f"t.{column} = ${number}")
    if after is not None:
        clauses.append(f"t.id > ${len(filters) + 1}")
    limit = len(filters) + (after is not None) + 1
    return " AND ".join(clauses) + f" ORDER BY t.id LIMIT ${limit}"
