"""A workflow member's first arguments: its parents' results, read from their records when
it starts (a failed parent, under ``on_failure="continue"``, as a failure marker), or for
an ``on_error``, the failure of the member it handles."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._handlers import split_payload
from ._task import Task, TaskStatus
from ._workflows import ERROR_OF_HEADER, INPUTS_HEADER

if TYPE_CHECKING:
    from ._storage import Storage

#: The key of the marker a dependent gets in place of a failed parent's result.
FAILED_MARKER = "bgcoor_failed"


def failure(record: Task) -> dict[str, Any]:
    """``{"bgcoor_failed": {"id", "task", "status", "error", "failure"}}``: what a member
    that did not succeed passes on (to its ``on_error``, or to dependents under
    ``continue``). ``failure`` is its last attempt's structured failure without the
    traceback (type, module, message, causes), or ``None`` when no attempt of it raised
    (say, cancelled or expired before it ran, or dead-lettered unrun)."""
    return {
        FAILED_MARKER: {
            "id": record.id,
            "task": record.name,
            "status": record.status.value,
            "error": record.error,
            "failure": None if record.failure is None else record.failure.outline(),
        }
    }


async def member_inputs(
    storage: Storage, task: Task, opened: Callable[[Any], Any] = lambda value: value
) -> list[Any]:
    """The values to put before the member's own positional arguments; ``opened`` opens
    a parent's sealed result (``Codec.open_result``)."""
    failed_id = task.headers.get(ERROR_OF_HEADER)
    if failed_id is not None:
        return [failure(await _record(storage, failed_id))]
    shapes = json.loads(task.headers[INPUTS_HEADER])
    if not isinstance(shapes, list):
        raise ValueError(f"header {INPUTS_HEADER} is not a list of shapes")
    ids = sorted(set(_leaves(shapes)))
    records = dict(zip(ids, await asyncio.gather(*(_record(storage, i) for i in ids)), strict=True))
    return [_value(shape, records, opened) for shape in shapes]


async def _record(storage: Storage, task_id: str) -> Task:
    record = await storage.get(task_id)
    if record is None:
        raise LookupError(f"the record of parent task {task_id} is gone")
    return record


def _leaves(shape: Any) -> list[str]:
    if isinstance(shape, str):
        return [shape]
    if isinstance(shape, list):
        return [leaf for part in shape for leaf in _leaves(part)]
    raise ValueError(f"header {INPUTS_HEADER} holds {type(shape).__name__}, not task ids")


def _value(shape: Any, records: dict[str, Task], opened: Callable[[Any], Any]) -> Any:
    if isinstance(shape, list):
        return [_value(part, records, opened) for part in shape]
    record = records[shape]
    return opened(record.result) if record.status is TaskStatus.SUCCEEDED else failure(record)


def with_leading(name: str, payload: Any, values: list[Any]) -> dict[str, Any]:
    """``payload`` with ``values`` as its first positional arguments."""
    args, kwargs = split_payload(name, payload)
    return {"args": [*values, *args], "kwargs": kwargs}
