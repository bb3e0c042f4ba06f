"""Unique tasks: at most one task holds a ``unique_key`` at a time.

``fn.options(unique_key="invoice-42", unique_for=timedelta(hours=1)).enqueue(...)`` puts
the key (and, with ``unique_for``, the end of its window) in the task's headers. A key is
*held* by the task that took it while that task is not final (pending, scheduled,
running, retrying) and, with ``unique_for``, until its window ends too, whatever became
of it. An enqueue of a task whose key is held enqueues nothing and returns a handle on
the holder (``h.deduplicated``). The check and the enqueue are one step of the backend
(:class:`UniqueStore`), never a check before an insert; a key needs no release: once its
holder is final (or its record gone) and its window over, the next enqueue takes it over
in its own step. So a SIGKILLed worker leaves no orphaned key (its task, redelivered, still
holds it) and a rolled-back enqueue leaves none either. Tasks without a key never reach
any of this: the producer's one extra cost is a header lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ._broker import Message
from ._errors import DuplicateTaskError
from ._task import Task, TaskStatus

#: Headers of a unique task: its key, and the end of its window (Unix seconds), if any.
UNIQUE_HEADER = "bgcoor-unique"
UNIQUE_UNTIL_HEADER = "bgcoor-unique-until"


def unique_key(task: Task) -> str | None:
    return task.headers.get(UNIQUE_HEADER)


def unique_until(task: Task) -> float | None:
    until = task.headers.get(UNIQUE_UNTIL_HEADER)
    return None if until is None else float(until)


def holds(status: TaskStatus | None, until: float | None, now: float) -> bool:
    """Whether a key's holder, whose record has ``status`` (``None``: no record left),
    with its window ending at ``until``, still holds it at ``now``."""
    if until is not None and now < until:
        return True
    return status is not None and not status.is_final


def take_keys(
    tasks: Sequence[Task], holder: Callable[[str], str | None]
) -> tuple[list[str | None], dict[str, Task]]:
    """The batch rule every store applies inside its step: for each task, the id of its
    key's holder (an earlier task of the batch, else ``holder(key)``: the stored one if it
    still :func:`holds` it), or ``None`` (it is enqueued); and the keys the batch takes,
    by the task taking each. A task holding its own key (the same call, tried again)
    raises :class:`DuplicateTaskError`."""
    holders: list[str | None] = []
    taken: dict[str, Task] = {}
    for task in tasks:
        key = unique_key(task)
        found = None
        if key is not None:
            found = taken[key].id if key in taken else holder(key)
        if found == task.id:
            raise DuplicateTaskError(f"task {task.id} already holds its unique key")
        if found is None and key is not None:
            taken[key] = task
        holders.append(found)
    return holders, taken


@runtime_checkable
class UniqueStore(Protocol):
    """Where unique keys are taken: a broker that enqueues atomically into its storage
    provides one through :meth:`Broker.unique_store`."""

    async def enqueue_unique(
        self, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> list[str | None]:
        """The atomic enqueue of ``tasks``, except those whose key is held (by a stored
        task or by an earlier one of this batch): for each task, the id of its key's
        holder (the task was not enqueued), or ``None`` (it was, and now holds its key,
        if it has one). One step: every enqueued task, its record, message and key, or
        none. A task whose key is held by itself (the same call, tried again) raises
        :class:`DuplicateTaskError`, as the atomic enqueue does."""
        ...
