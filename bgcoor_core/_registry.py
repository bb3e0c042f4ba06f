"""TaskRegistry: task names to handlers, safe to change from any thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _limits as limits
from ._errors import TaskRegistrationError, UnknownTaskError
from ._handlers import FunctionHandler, Handler, is_async_handler
from ._task import validate_queue_name, validate_task_name


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task defaults; ``None`` falls back to the settings."""

    max_retries: int | None = None
    timeout: float | None = None
    queue: str = "default"
    priority: int = 0
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        """Refuse a value out of its range (:mod:`._limits`) when the task is declared."""
        for option, bounds in _OPTION_RANGES:
            value = getattr(self, option)
            if value is not None:
                bounds.check(f"task option {option}", value)


_OPTION_RANGES = (
    ("max_retries", limits.RETRIES),
    ("timeout", limits.TIMEOUT),
    ("priority", limits.PRIORITY),
    ("retry_backoff", limits.BACKOFF),
    ("retry_backoff_max", limits.BACKOFF),
)


#: Option names the core owns; a plugin's task options must use others.
CORE_OPTION_NAMES = frozenset(
    {"name", "max_retries", "timeout", "queue", "priority", "retry_backoff"}
    | {"retry_backoff_max", "retry_on", "headers", "result_ttl", "expires", "delay", "eta"}
)


@dataclass(frozen=True, slots=True)
class RegisteredTask:
    name: str
    handler: Handler
    is_async: bool
    options: TaskOptions = field(default_factory=TaskOptions)


class TaskRegistry:
    """Handlers by name. Registration may happen at any time, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, RegisteredTask] = {}

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
        entry = RegisteredTask(name, handler, is_async_handler(handler), options)
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

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
