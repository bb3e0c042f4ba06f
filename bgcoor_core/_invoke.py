"""Calling one task's handler: its timeout, its result's checks, the context it runs in
(``current_task()``, copied into the worker thread of a sync handler) and the plugins'
execution wrappers (``bgcoor_wrap_execution``) around it. A task declared with
``isolation="process"`` runs in a child process instead (:mod:`bgcoor_core._isolation`),
under a deadline that kills it."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import TYPE_CHECKING, Any

from ._context import _CURRENT, CurrentTask
from ._errors import DecodeError, PayloadError, TaskTimeoutError
from ._values import Opaque

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._codec import Codec
    from ._isolation import ChildPool
    from ._plugins import PluginHost
    from ._settings import Settings
    from ._task import Task
    from ._task_registry import RegisteredTask
    from ._threads import TaskThreads


class Invoker:
    """Runs handlers for an executor; holds what every call needs."""

    def __init__(
        self,
        settings: Settings,
        threads: TaskThreads | None,
        host: PluginHost | None,
        codec: Codec,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.threads = threads
        self.host = host
        # A worker pool's threads carry its child processes (see WorkerPool), which it
        # stops at shutdown; any other executor (``drain``) starts one child per
        # process-isolated task.
        self._child_pool: Callable[[], ChildPool] | None = (
            None if threads is None else threads.child_pool
        )
        self._children: ChildPool | None = None

    async def invoke(self, entry: RegisteredTask, current: CurrentTask) -> Any:
        """The handler's result (checked to fit its record); raises what it raised."""
        token = _CURRENT.set(current)
        try:
            if self.host is not None and self.host.wraps_execution:
                return await self._wrapped(entry, current, self.host)
            return await self._call(entry, current)
        finally:
            _CURRENT.reset(token)

    async def _wrapped(self, entry: RegisteredTask, current: CurrentTask, host: PluginHost) -> Any:
        async with contextlib.AsyncExitStack() as stack:
            for wrapper in host.execution_wrappers(current):
                if hasattr(wrapper, "__aenter__"):
                    await stack.enter_async_context(wrapper)
                else:
                    stack.enter_context(wrapper)
            try:
                current.result = await self._call(entry, current)
            except BaseException as exc:
                current.error = exc
                raise
        if current.error is not None:  # a wrapper swallowed it: the outcome stands
            raise current.error
        return current.result

    async def _call(self, entry: RegisteredTask, current: CurrentTask) -> Any:
        task = current.task
        timeout = task.timeout or entry.options.timeout or self.settings.timeout
        if entry.process_target is not None:  # the child's deadline kills it
            return self._checked_result(task.name, await self._isolated(entry, task, timeout))
        if timeout is None:  # no deadline to arm: the common case costs nothing
            return self._checked_result(task.name, await self._run(entry, task))
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                result = await self._run(entry, task)
        except TimeoutError as exc:
            if not deadline.expired():  # the handler's own TimeoutError, not ours
                raise
            raise TaskTimeoutError(
                f"task {task.name!r} exceeded its timeout of {timeout}s"
            ) from exc
        return self._checked_result(task.name, result)

    async def _run(self, entry: RegisteredTask, task: Task) -> Any:
        payload = task.payload
        if type(payload) is Opaque:
            payload = self._opened(task)
        if entry.is_async:
            return await entry.handler.run(payload)
        # The thread runs in a copy of this context: current_task() works there too.
        context = contextvars.copy_context()
        if self.threads is not None:
            return await self.threads.run(context.run, entry.handler.run, payload)
        return await asyncio.get_running_loop().run_in_executor(
            None, context.run, entry.handler.run, payload
        )

    def _opened(self, task: Task) -> Any:
        """A sealed payload's content; a type this worker does not accept is the task's
        bad payload (it is dead-lettered, never loaded)."""
        try:
            return self.codec.open(task.payload)
        except DecodeError as exc:
            raise PayloadError(f"task {task.name!r}: {exc}") from None

    async def _isolated(self, entry: RegisteredTask, task: Task, timeout: float | None) -> Any:
        assert entry.process_target is not None
        if type(task.payload) is Opaque:  # the child is handed the content
            task = task.model_copy(update={"payload": self._opened(task)})
        children = self._children
        if children is None:
            from ._isolation import ChildPool

            if self._child_pool is not None:
                children = self._child_pool()
            else:  # nobody closes this executor's pool: no child outlives its task
                children = ChildPool.for_settings(self.settings, None)
                children.max_tasks_per_child = 1
            self._children = children
        return await children.run(
            entry.process_target, task, timeout, entry.options.memory_limit_mb
        )

    def _checked_result(self, name: str, result: Any) -> Any:
        if result is None:  # most tasks: nothing to encode or measure
            return None
        return self.codec.check_result(name, result, self.settings.max_result_bytes)
