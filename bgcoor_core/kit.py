"""The backend author's kit: what every broker and storage needs, public and documented.

A backend (ours or a third party's) imports these instead of private modules::

    from bgcoor_core import kit

    kit.validate_queue_name(queue)
    kit.check_transition(task_id, old_status, old_token, new_status, new_token)
    task = kit.decode_record(task_id, raw_json, status=stored_status)
    rows = await kit.shielded_take(run_reserve(), give_back=release_rows)

Arguments of the public broker methods (queue names, limits, offsets, leases, delays) are
already checked by the :class:`~bgcoor_core.Broker` base class before a backend's own
implementation runs; this kit is for what a backend checks or builds itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from ._backend_registry import redact
from ._background import running_in_background
from ._broker import record_json, record_jsons
from ._cancels import CancelSignals, OnCancel, OnGap
from ._coalesce import Coalescer
from ._codec import _summarise
from ._composition import Graph, Node, OnFailure
from ._errors import CorruptRecordError, DuplicateTaskError, StaleLeaseError
from ._gates import GATE_HEADER, Gate, admit
from ._limits import MAX_DELAY, MAX_LEASE
from ._schedules import ACTIVE as SCHEDULE_ACTIVE
from ._schedules import WAITING as SCHEDULE_WAITING
from ._schedules import apply_fire
from ._storage import check_page, check_transition, check_write, pause_within
from ._task import (
    FROM_UNKNOWN_STATUS,
    QUEUE_NAME,
    Task,
    TaskStatus,
    validate_queue_name,
    validate_task_id,
    validate_task_name,
)
from ._text import escape_unprintable, printable
from ._unique import (
    UNIQUE_HEADER,
    UNIQUE_UNTIL_HEADER,
    holds,
    take_keys,
    unique_key,
    unique_until,
)
from ._values import Opaque, UnrepresentableError, pack, reduce, unpack
from ._workflows import (
    NODE_HEADER,
    WORKFLOW_HEADER,
    Cells,
    Effects,
    Progress,
    WorkflowState,
    WorkflowStatus,
    apply_outcome,
    cancel_all,
    expiry,
    member_of,
    reopen,
)

T = TypeVar("T")
_STATUSES = frozenset(TaskStatus)


def is_queue_name(name: object) -> bool:
    """Whether ``name`` is a valid queue name (:func:`validate_queue_name` without raising):
    for listing stored names, skipping ones written by something else."""
    return isinstance(name, str) and QUEUE_NAME.fullmatch(name) is not None


def decode_record(task_id: str, data: str | bytes, *, status: str | None = None) -> Task:
    """A stored record's JSON as a :class:`Task`, or :class:`CorruptRecordError` naming the
    id and what is wrong: ``status`` (the backend's own status column, if it has one)
    names no status, the JSON is not a task, or it is another task's record."""
    if status is not None and status not in _STATUSES:
        raise CorruptRecordError(
            f"corrupt record: task {task_id} has unknown status {printable(status, 40)!r}"
        )
    try:
        task = Task.model_validate_json(data)
    except ValidationError as exc:
        raise CorruptRecordError(
            f"corrupt record: task {task_id} cannot be decoded: {_summarise(exc)}"
        ) from None
    if task.id != task_id:
        raise CorruptRecordError(
            f"corrupt record: task {task_id} holds the record of task {printable(task.id, 60)!r}"
        )
    return task


def placeholder(task_id: str, queue: str) -> Task:
    """The stand-in task of a :class:`~bgcoor_core.Reservation` whose message or record
    cannot be read (give it a ``defect`` saying why): it carries only what settling the
    message needs, its id and queue."""
    return Task.model_construct(id=task_id, name="<corrupt>", queue=queue)


async def shielded_take(take: Awaitable[T], give_back: Callable[[T], Any]) -> T:
    """Run a reserve's "take" (the statement or script that leases messages) to its end
    even when the caller is cancelled meanwhile (a pool shutting down); what it took is
    then passed to ``give_back`` (a function, or one returning a coroutine, which is run)
    instead of waiting out its lease. Returns what it took otherwise."""
    job = asyncio.ensure_future(take)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        job.add_done_callback(lambda done: _give_back(done, give_back))
        raise


_PENDING: set[asyncio.Future[Any]] = set()  # hand-backs still running (kept referenced)


def _give_back(done: asyncio.Future[T], give_back: Callable[[T], Any]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    outcome = give_back(done.result())
    if asyncio.iscoroutine(outcome):
        running = asyncio.ensure_future(outcome)
        _PENDING.add(running)
        running.add_done_callback(_PENDING.discard)


__all__ = [
    "FROM_UNKNOWN_STATUS",
    "GATE_HEADER",
    "MAX_DELAY",
    "MAX_LEASE",
    "NODE_HEADER",
    "SCHEDULE_ACTIVE",
    "SCHEDULE_WAITING",
    "UNIQUE_HEADER",
    "UNIQUE_UNTIL_HEADER",
    "WORKFLOW_HEADER",
    "CancelSignals",
    "Cells",
    "Coalescer",
    "CorruptRecordError",
    "DuplicateTaskError",
    "Effects",
    "Gate",
    "Graph",
    "Node",
    "OnCancel",
    "OnFailure",
    "OnGap",
    "Opaque",
    "Progress",
    "StaleLeaseError",
    "UnrepresentableError",
    "WorkflowState",
    "WorkflowStatus",
    "admit",
    "apply_fire",
    "apply_outcome",
    "cancel_all",
    "check_page",
    "check_transition",
    "check_write",
    "decode_record",
    "escape_unprintable",
    "expiry",
    "holds",
    "is_queue_name",
    "member_of",
    "pack",
    "pause_within",
    "placeholder",
    "printable",
    "record_json",
    "record_jsons",
    "redact",
    "reduce",
    "reopen",
    "running_in_background",
    "shielded_take",
    "take_keys",
    "unique_key",
    "unique_until",
    "unpack",
    "validate_queue_name",
    "validate_task_id",
    "validate_task_name",
]
