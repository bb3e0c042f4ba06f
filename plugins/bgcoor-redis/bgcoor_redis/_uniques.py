"""The unique key store: each batch of an enqueue is one call of ``lua/enqueue_unique.lua``.

A key ``k`` taken by task ``id`` is the string ``uniq:<k>`` under the prefix, holding
``"<window end> <id>"`` (Unix seconds, empty for no window). The script reads each key's
entry and its holder's record status, applies :func:`bgcoor_core.kit.holds` (ported as
``unique_holds`` in ``lua/common.lua``), and enqueues the tasks whose keys are free with the
atomic enqueue's own functions (``refuse_new``, ``store_new``), then writes their entries:
everything checked before the first write, so a refusal leaves nothing behind. Nothing
releases a key: the next enqueue takes it over once its holder is final (or its record
gone) and its window over. An entry expires with its holder's record (when that gets a
TTL, at its expiry or the window's end, whichever is later), so entries do not outlive
the records they point at. A batch into a limited queue is refused whole (``QueueFullError``)
when the tasks it would enqueue, those whose keys are free, do not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bgcoor_core import DuplicateTaskError, Message, Task
from bgcoor_core.kit import record_jsons, unique_key, unique_until

from ._encoding import limit_args, message_args, raise_for, record_args, text

if TYPE_CHECKING:
    from ._base import RedisBase


class RedisUniques:
    """The :class:`~bgcoor_core.UniqueStore` of a :class:`~bgcoor_redis.RedisBackend`
    whose storage is its own keys."""

    def __init__(self, backend: RedisBase) -> None:
        self.backend = backend

    async def enqueue_unique(
        self, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> list[str | None]:
        if len(tasks) != len(messages):
            raise ValueError(f"{len(tasks)} tasks with {len(messages)} messages")
        if not tasks:
            return []
        args = unique_args(tasks, messages)
        args += limit_args(messages, self.backend.queue_limits)  # those enqueued count
        reply = await self.backend.run("enqueue_unique", *args)
        return holders(reply, tasks)


def unique_args(tasks: Sequence[Task], messages: Sequence[Message]) -> list[Any]:
    """The script's arguments after the prefix, every task encoded and checked first."""
    args: list[Any] = [len(tasks)]
    for task, json in zip(tasks, record_jsons(tasks, messages), strict=True):
        args += record_args(task, json)
    for message in messages:
        args += message_args(message)
    for task in tasks:
        key, until = unique_key(task), unique_until(task)
        args += ["" if key is None else key, "" if until is None else repr(until)]
    return args


def holders(reply: Any, tasks: Sequence[Task]) -> list[str | None]:
    """Each task's holder (``None``: it was enqueued) from the script's reply, or raise."""
    found: list[str | None] = [None] * len(tasks)
    if reply == 0:
        return found
    code = text(reply[0])
    if code == "SELF":
        raise DuplicateTaskError(f"task {text(reply[1])} already holds its unique key")
    if code != "HELD":
        status = {task.id: task.status.value for task in tasks}
        task_id = text(reply[1])
        raise_for(reply, task_id, status.get(task_id, ""))
    for at in range(1, len(reply), 2):
        found[int(reply[at])] = text(reply[at + 1])
    return found
