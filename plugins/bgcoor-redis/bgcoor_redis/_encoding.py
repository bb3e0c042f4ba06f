"""Script arguments and replies: tasks and messages in, errors and records out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bgcoor_core import (
    CapabilityError,
    CorruptRecordError,
    DuplicateTaskError,
    InvalidTransitionError,
    Message,
    QueueFullError,
    StaleLeaseError,
    Task,
    TaskStatus,
    kit,
)
from bgcoor_core.kit import record_jsons, validate_queue_name

from ._scripts import MAX_PRIORITY, MIN_PRIORITY

#: Records plus messages per enqueue script call. A script blocks the server while it runs;
#: a chunk of this size takes a few milliseconds. A batch into a limited queue is not split.
CHUNK = 500


def record_args(task: Task, json: str | None = None) -> list[Any]:
    """id, status, token, name, queue, json: a record as the scripts take it (``json``:
    its text when already made, see :func:`~bgcoor_core.kit.record_jsons`).

    The lease token is ``""`` for none and ``"+" + token`` otherwise, so that an empty
    token still counts as a token, as it does in :func:`bgcoor_core.check_write`.
    """
    token = "" if task.lease_token is None else "+" + task.lease_token
    if json is None:
        json = task.model_dump_json()
    return [task.id, task.status.value, token, task.name, task.queue, json]


#: Script arguments per message (:func:`message_args`).
MESSAGE_FIELDS = 6


def message_args(message: Message) -> list[Any]:
    """id, queue, body, priority, eta, gate: a message as the enqueue script takes it.

    The gate (``Message.gate``, rate and concurrency limits) is passed as it is, ``""`` for
    none: the reserve script reads it, and hands a message whose gate it cannot read to a
    worker as a defect, which dead-letters it."""
    validate_queue_name(message.queue)
    if not MIN_PRIORITY <= message.priority <= MAX_PRIORITY:
        raise CapabilityError(
            f"task {message.id} has priority {message.priority}; the Redis backend supports "
            f"priorities from {MIN_PRIORITY} to {MAX_PRIORITY}"
        )
    eta = "" if message.eta is None else repr(float(message.eta))
    gate = "" if message.gate is None else message.gate
    return [message.id, message.queue, message.body, message.priority, eta, gate]


def limit_args(messages: Sequence[Message], queue_limits: dict[str, int]) -> list[Any]:
    """The arguments an enqueue script checks queue limits by (``refuse_full`` in
    ``lua/common.lua``): the number of limited queues ``messages`` go to, then each one's
    name and limit, in the order they first appear. ``[]`` when none is limited: the script
    then runs exactly as it does without limits (no argument, no command more)."""
    if not queue_limits:
        return []
    found: dict[str, int] = {}
    for message in messages:
        limit = queue_limits.get(message.queue)
        if limit is not None and message.queue not in found:
            found[message.queue] = limit
    if not found:
        return []
    args: list[Any] = [len(found)]
    for queue, limit in found.items():
        args += [queue, limit]
    return args


def ttl_arg(ttl: float | None) -> float:
    """0 for no expiry; a TTL of zero or less expires the record at once."""
    if ttl is None:
        return 0
    return max(ttl, 0.001)


def text(value: bytes | str) -> str:
    """A reply as text; bytes that are not UTF-8 (written by something else) escaped."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def raise_for(reply: Any, task_id: str, status: str = "") -> None:
    """Turn a script's refusal into the core's errors; ``0`` means done.

    A refusal is ``"STALE"``, ``"TRANSITION <old status>"``, ``"CORRUPT <what>"`` or
    ``"DUPLICATE"``, or a list of one of those, the id concerned and, for a duplicate of a
    stored record, that record's status; ``status`` is the status the refused write wanted.
    An enqueue past a queue limit is ``["FULL", queue, limit, adding]``.
    """
    if reply == 0:
        return
    if isinstance(reply, list) and reply[0] == b"FULL":
        queue, limit, adding = text(reply[1]), int(reply[2]), int(reply[3])
        raise QueueFullError(queue, limit, too_large=adding if adding > limit else 0)
    if isinstance(reply, list):
        if len(reply) > 2:
            raise DuplicateTaskError(
                f"task {text(reply[1])} already has a record (status {text(reply[2])}): "
                "a new task cannot reuse its id"
            )
        reply, task_id = reply[0], text(reply[1])
    code = text(reply)
    if code == "STALE":
        raise StaleLeaseError(
            f"task {task_id}: outcome from an expired lease refused (the task was delivered again)"
        )
    if code == "DUPLICATE":
        raise DuplicateTaskError(f"task {task_id} is already in the broker")
    if code.startswith("CORRUPT "):
        raise CorruptRecordError(
            f"stored record of task {task_id} is corrupt: {code.removeprefix('CORRUPT ')}"
        )
    if code.startswith("TRANSITION "):
        old = code.removeprefix("TRANSITION ")
        raise InvalidTransitionError(f"task {task_id}: cannot move from {old} to {status}")
    raise RuntimeError(f"unexpected reply from a Redis script: {code!r}")


_STATUSES = frozenset(status.value.encode() for status in TaskStatus)


def decode_record(
    task_id: str,
    raw: bytes | None,
    started: bytes | None = None,
    token: bytes | None = None,
    status: bytes | None = None,
) -> Task:
    """A record from its JSON and, if a reserve marked it running, its ``r`` field
    (``started``) and ``k`` field (``token``): see ``lua/common.lua``. ``status``, its ``s``
    field, is checked when given. Raises :class:`CorruptRecordError` naming what is wrong."""
    if status is not None and status not in _STATUSES:
        raise CorruptRecordError(
            f"stored record of task {task_id} has status {_shown(status)}, not a TaskStatus"
        )
    if raw is None:
        raise CorruptRecordError(f"stored record of task {task_id} has no JSON (field j)")
    task = kit.decode_record(task_id, raw)  # also refuses another task's JSON
    if started and token:
        task = _apply_start(task_id, task, started, token)
    if status is not None and status != task.status.value.encode():
        # written together by every script: apart, something else wrote one of them
        raise CorruptRecordError(
            f"stored record of task {task_id} has status {_shown(status)} in its field s "
            f"but {task.status.value!r} in its JSON"
        )
    return task


def _apply_start(task_id: str, task: Task, started: bytes, token: bytes) -> Task:
    """The record as the reserve marked it running (``r`` and ``k``: lua/common.lua)."""
    try:
        at = datetime.fromtimestamp(float(started.split(b" ", 1)[0]), UTC)
        if not token.startswith(b"+"):
            raise ValueError("the lease token field k does not start with '+'")
        return task.started(token[1:].decode(), at)
    except (ValueError, OverflowError, OSError) as exc:
        raise CorruptRecordError(
            f"stored record of task {task_id} was marked running unreadably "
            f"(r {_shown(started)}, k {_shown(token)}): {exc}"
        ) from None


def _shown(value: bytes) -> str:
    """A stored value for an error message: short, unprintable bytes escaped."""
    return repr(value[:40].decode("utf-8", "backslashreplace")) + ("..." if len(value) > 40 else "")


def chunks(
    tasks: Sequence[Task], messages: Sequence[Message], limits: Sequence[Any] = ()
) -> list[list[Any]]:
    """Enqueue script arguments (after the prefix), at most :data:`CHUNK` items each.

    Records and messages at the same positions share a chunk, so a task's record and its
    message are stored in the same atomic step. With ``limits`` (:func:`limit_args`, the
    batch goes to a limited queue) the batch is one chunk, whatever its size, with the
    limits after it: it is accepted or refused whole.
    """
    size = max(len(tasks), len(messages), 1) if limits else CHUNK // 2
    out = []
    for start in range(0, max(len(tasks), len(messages)), size):
        records = tasks[start : start + size]
        pushed = messages[start : start + size]
        args: list[Any] = [len(records), len(pushed)]
        for task, json in zip(records, record_jsons(records, pushed), strict=True):
            args += record_args(task, json)
        for message in pushed:
            args += message_args(message)
        args += limits
        out.append(args)
    return out
