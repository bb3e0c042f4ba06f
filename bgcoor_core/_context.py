"""``current_task()``: what a running task can know about itself.

The executor sets it around each attempt, in the task's own context: async task functions
see it directly, sync ones through the context copied into their worker thread, and so do
the context managers of ``bgcoor_wrap_execution`` plugins (and any ``contextvars`` value
such a plugin sets).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from ._task import Task


class CancelFlag:
    """Set once to ask a task to stop; read from any thread. (A ``threading.Event`` would
    do, but costs a lock and a condition for every task run; a bool's assignment is
    atomic.)"""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class CurrentTask:
    """The task being run, as its handler and the execution wrappers see it.

    ``result`` and ``error`` are filled in when the handler returns or raises, before the
    wrappers exit, so a wrapper can see the outcome.
    """

    __slots__ = ("_cancel", "error", "result", "task")

    def __init__(self, task: Task, cancel: CancelFlag | None = None) -> None:
        self.task = task
        self._cancel = cancel if cancel is not None else CancelFlag()
        self.result: Any = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"CurrentTask({self.task.id!r}, {self.task.name!r}, attempt={self.attempt})"

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def queue(self) -> str:
        return self.task.queue

    @property
    def attempt(self) -> int:
        """This attempt's number: 1 for the first run, 2 for the first retry, ..."""
        return self.task.attempts

    @property
    def headers(self) -> Mapping[str, str]:
        return self.task.headers

    @property
    def cancel_requested(self) -> bool:
        """True once the pool was asked to cancel this task. An async task is interrupted
        as well; a sync task (a thread cannot be interrupted) should check this flag."""
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        """Set :attr:`cancel_requested` (thread-safe; the pool calls it)."""
        self._cancel.set()


_CURRENT: ContextVar[CurrentTask] = ContextVar("bgcoor_current_task")


def current_task() -> CurrentTask:
    """The task running in this context; :class:`RuntimeError` outside a running task."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("current_task() called outside a running bg-coor task") from None
