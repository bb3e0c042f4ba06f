"""The storage contract: task records, their status and results."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from ._codec import Codec, printable
from ._errors import InvalidTransitionError, ResultTimeoutError, StaleLeaseError
from ._task import Task, TaskStatus, can_transition


def check_write(old: Task | None, new: Task) -> None:
    """The rule every storage applies before overwriting ``old`` with ``new``.

    * the status change must be allowed (see ``ALLOWED_TRANSITIONS``);
    * an outcome written under a lease (``new.lease_token`` set, status not ``running``)
      is refused when the stored record belongs to another lease: that writer is a
      zombie whose task was delivered again.
    """
    if old is not None:
        check_transition(new.id, old.status, old.lease_token, new.status, new.lease_token)


def check_transition(
    task_id: str,
    old_status: TaskStatus | str,
    old_token: str | None,
    new_status: TaskStatus,
    new_token: str | None,
) -> None:
    """:func:`check_write` for backends that read only the stored status and token."""
    if new_token is not None and new_status is not TaskStatus.RUNNING and old_token != new_token:
        raise StaleLeaseError(
            f"task {task_id}: outcome from an expired lease refused (the task was delivered again)"
        )
    if not can_transition(old_status, new_status):
        raise InvalidTransitionError(
            f"task {task_id}: cannot move from {printable(str(old_status), 40)} to {new_status}"
        )


class Storage(ABC):
    """Base class of every storage. Subclasses implement the abstract primitives."""

    #: Longest pause between two polls of the default :meth:`wait`, in seconds.
    wait_poll_max: float = 0.05
    #: Errors after which a call's outcome is unknown; see ``Broker.transient_errors``.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError, TimeoutError)

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec = codec or Codec.json()

    @abstractmethod
    async def save(self, task: Task, *, ttl: float | None = None) -> None:
        """Insert or overwrite the record of ``task`` after :func:`check_write`.

        ``ttl`` (seconds) makes the record expire; expired records are never returned.
        """

    @abstractmethod
    async def save_many(self, tasks: Sequence[Task]) -> None:
        """Store several *new* records in one step, all or none: an id that already has a
        record (in any status, a finished task's too) refuses the whole batch with
        :class:`~bgcoor_core.DuplicateTaskError` naming the id and its status."""

    @abstractmethod
    async def get(self, task_id: str) -> Task | None:
        """The record of ``task_id``, or ``None`` if unknown or expired."""

    @abstractmethod
    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Task]:
        """Records matching every given filter, ordered by id (oldest first).

        Pagination: pass the last id of a page as ``after`` to get the next one.
        """

    @abstractmethod
    async def counts(self) -> dict[TaskStatus, int]:
        """Number of live records in each status (every status is a key)."""

    async def delete_expired(self) -> int:
        """Remove records whose time-to-live has passed; return how many."""
        return 0

    async def wait(self, task_id: str, *, timeout: float | None) -> Task:
        """Wait until the record of ``task_id`` reaches a final status and return it.

        The default polls with a growing interval (1 ms up to :attr:`wait_poll_max`);
        backends that can be notified override it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.001
        while True:
            task = await self.get(task_id)
            if task is not None and task.status.is_final:
                return task
            await asyncio.sleep(pause_within(deadline, interval, task_id, timeout))
            interval = min(interval * 2, self.wait_poll_max)

    async def close(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Release connections. The storage must not be used afterwards."""


def pause_within(
    deadline: float | None, pause: float, task_id: str, timeout: float | None
) -> float:
    """``pause`` seconds, or what is left before ``deadline`` (``time.monotonic()``) if
    less, for a :meth:`Storage.wait` between two looks at the record of ``task_id``;
    raises :class:`ResultTimeoutError` once ``deadline`` has passed (``timeout``: the
    seconds the caller gave, for the message)."""
    if deadline is None:
        return pause
    left = deadline - time.monotonic()
    if left <= 0:
        raise ResultTimeoutError(f"task {task_id} did not finish within {timeout}s")
    return min(pause, left)


def check_page(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
