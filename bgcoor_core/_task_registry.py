"""TaskRegistry: task names to handlers, safe to change from any thread."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ._errors import OutOfRangeError, TaskRegistrationError, UnknownTaskError
from ._handlers import FunctionHandler, Handler, is_async_handler
from ._options import check, options
from ._schedules import ScheduleDefinition
from ._task import validate_queue_name, validate_task_name

if TYPE_CHECKING:
    from ._isolation import ChildTarget


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's resolved defaults (``None`` falls back to the settings); the options
    themselves, with their types and ranges, are declared once in
    :class:`~bgcoor_core._options.TaskDefaults`. ``extra`` holds the options plugins
    declared (``bgcoor_register_task_options``) that the task sets."""

    max_retries: int | None = None
    timeout: float | None = None
    queue: str = "default"
    priority: int = 0
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    result_ttl: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: ``None``: the default (sync functions in the worker's threads, async ones on its loop).
    isolation: str | None = None
    memory_limit_mb: int | None = None
    rate_limit: str | None = None
    concurrency_limit: int | None = None
    limit_key: Callable[..., Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a value of the wrong type or out of its range when the task is declared."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        check("task", given, where="task option ")
        if (
            self.limit_key is not None
            and self.rate_limit is None
            and self.concurrency_limit is None
        ):
            raise OutOfRangeError(
                "task option limit_key needs a rate_limit or a concurrency_limit to key"
            )
        if self.memory_limit_mb is not None and self.isolation != "process":
            raise OutOfRangeError(
                "task option memory_limit_mb needs isolation='process': only a child "
                "process's memory can be capped"
            )


#: Option names the core owns; a plugin's task options must use others.
CORE_OPTION_NAMES = frozenset(options("task")) | frozenset(options("call"))


@dataclass(frozen=True, slots=True)
class RegisteredTask:
    name: str
    handler: Handler
    is_async: bool
    options: TaskOptions = field(default_factory=TaskOptions)
    #: Where a child process imports the function from, for ``isolation="process"``.
    process_target: ChildTarget | None = None


class TaskRegistry:
    """Handlers by name. Registration may happen at any time, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, RegisteredTask] = {}
        self._schedules: dict[str, ScheduleDefinition] = {}

    def register(
        self,
        name: str,
        handler: Handler | Callable[..., Any],
        options: TaskOptions | None = None,
    ) -> RegisteredTask:
        """Register ``handler`` (an object with ``run(payload)`` or a function) as ``name``."""
        validate_task_name(name)
        options = options or TaskOptions()
        validate_queue_name(options.queue)
        if not isinstance(handler, Handler):
            if not callable(handler):
                raise TaskRegistrationError(
                    f"handler for {name!r} must be callable or have a run(payload) method"
                )
            handler = FunctionHandler(handler, name)
        is_async = is_async_handler(handler)
        target = _isolation_of(name, handler, is_async, options.isolation)
        entry = RegisteredTask(name, handler, is_async, options, target)
        with self._lock:
            if name in self._tasks:
                raise TaskRegistrationError(f"task {name!r} is already registered")
            self._tasks[name] = entry
        return entry

    def get(self, name: str) -> RegisteredTask:
        """The task registered as ``name``; :class:`UnknownTaskError` if there is none."""
        entry = self._tasks.get(name)  # dict reads are atomic; no lock on the hot path
        if entry is None:
            raise UnknownTaskError(name, self.names())
        return entry

    def resolve(self, name: str) -> RegisteredTask:
        """The task ``name`` means to a person typing it: the task registered as ``name``,
        else the only one whose dotted name ends in ``.name`` (``add`` for ``jobs.add``).

        Otherwise :class:`UnknownTaskError`, suggesting the full names that end in it (when
        several do) or the closest registered names ("did you mean 'jobs.add'?"). For the
        command line and other people-facing lookups; workers use :meth:`get`.
        """
        entry = self._tasks.get(name)
        if entry is not None:
            return entry
        names = self.names()
        ending = [known for known in names if known.endswith("." + name)]
        if len(ending) == 1:
            return self._tasks[ending[0]]
        suggestions = ending or _close_names(name, names)
        raise UnknownTaskError(name, names, suggestions)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def add_schedule(self, definition: ScheduleDefinition) -> None:
        """Declare a schedule of this app (``@manager.periodic``): every scheduler
        serving the app upserts it. Two declarations may not share an id."""
        with self._lock:
            if definition.id in self._schedules:
                raise TaskRegistrationError(f"schedule {definition.id!r} is already declared")
            self._schedules[definition.id] = definition

    def schedules(self) -> list[ScheduleDefinition]:
        """The schedules declared in this app, by id."""
        with self._lock:
            return [self._schedules[key] for key in sorted(self._schedules)]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


def _isolation_of(
    name: str, handler: Handler, is_async: bool, isolation: str | None
) -> ChildTarget | None:
    if isolation == "process":
        from ._isolation import child_target  # only for such tasks

        return child_target(name, handler)
    if isolation == "thread" and is_async:
        raise TaskRegistrationError(
            f"task {name!r} has isolation='thread', but it is async: it runs on the "
            "worker's event loop (drop the option)"
        )
    return None


def _close_names(name: str, names: list[str]) -> list[str]:
    """Registered names close to ``name`` as a whole (``jobs.ad``: ``jobs.add``), else by
    their last part (``ad``: every ``*.add``)."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.8)
    if close:
        return sorted(close)
    last = name.rsplit(".", 1)[-1]
    return [
        known
        for known in names
        if difflib.SequenceMatcher(None, last, known.rsplit(".", 1)[-1]).ratio() >= 0.75
    ]
