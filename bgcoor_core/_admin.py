"""Admin operations over the backends, paging in bounded batches."""

from __future__ import annotations

from collections.abc import Sequence

from ._task import Task, TaskStatus
from ._wiring import Backends
from ._workflows import member_of

#: Records or letters an admin operation loads at once.
ADMIN_PAGE = 500


async def requeue_dead(
    backends: Backends, queue: str, ids: Sequence[str] | None = None
) -> list[str]:
    """Put dead letters (all, or those in ``ids``) back in their queue for one more
    attempt each; return their ids. Pages through the dead-letter queue, so memory
    stays bounded however many letters wait there."""
    broker, storage = backends.broker, backends.storage
    wanted = None if ids is None else set(ids)
    moved: list[str] = []
    offset = 0
    while page := await broker.dead_letters(queue, limit=ADMIN_PAGE, offset=offset):
        chosen = [d for d in page if wanted is None or d.id in wanted]
        for letter in chosen:
            if letter.task is not None:
                record = await storage.get(letter.id) or letter.task
                record.status, record.lease_token = TaskStatus.PENDING, None
                workflows = backends.workflows if _is_member(record) else None
                if workflows is not None:  # its workflow may run again (a step of its own)
                    await workflows.reopen_member(record)
                else:
                    await storage.save(record)
        done = await broker.requeue_dead(queue, [d.id for d in chosen]) if chosen else []
        moved.extend(done)
        offset += len(page) - len(done)  # what stayed behind shifts the next page
    return moved


def _is_member(task: Task) -> bool:
    try:
        return member_of(task) is not None
    except (KeyError, ValueError):  # headers that cannot be read: requeued on its own
        return False
