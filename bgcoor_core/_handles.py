"""What the decorator returns and what an enqueue gives back: task functions, per-call
options, and handles on enqueued tasks."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack, overload

from ._building import build, payload_of
from ._errors import TaskCancelledError
from ._failures import failed_error
from ._handlers import adapter_for
from ._options import CallOptions
from ._options import check as check_options
from ._signature import Signature
from ._task import Task, TaskStatus
from ._task_registry import RegisteredTask

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._manager import TaskManager

P = ParamSpec("P")
R = TypeVar("R")


class TaskHandle(Generic[R]):
    """A reference to an enqueued task: its id, status and eventual result."""

    def __init__(
        self,
        manager: TaskManager,
        task_id: str,
        decode: Callable[[Any], R] | None = None,
        *,
        deduplicated: bool = False,
    ) -> None:
        self.manager = manager
        self.id = task_id
        self._decode = decode
        #: True when the enqueue found its unique key held and returned the holder,
        #: enqueueing nothing.
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the task to finish and return its result.

        Raises :class:`TaskFailedError` (failed or dead, with the error, traceback and
        structured ``failure``; also an instance of the original exception's class when
        that is found here, see :func:`~bgcoor_core._failures.failed_error`),
        :class:`TaskCancelledError`, or :class:`ResultTimeoutError`.
        """
        task = await self.manager.storage.wait(self.id, timeout=timeout)
        return self._unwrap(task)

    def _unwrap(self, task: Task) -> R:
        if task.status is TaskStatus.SUCCEEDED:  # sealed: opened here, or DecodeError
            result = self.manager.broker.codec.open_result(task.result)
            return self._decode(result) if self._decode else result
        if task.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(f"task {task.id} was cancelled")
        raise failed_error(task)

    async def info(self) -> Task:
        """The full task record."""
        return await self.manager.get(self.id)

    async def status(self) -> TaskStatus:
        return (await self.info()).status

    async def cancel(self) -> bool:
        return await self.manager.cancel(self.id)

    def result_sync(self, timeout: float | None = None) -> R:
        """:meth:`result` for synchronous code."""
        return self.manager.portal.call(self.result(timeout))


class TaskCall(Generic[P, R]):
    """A task function with per-call options: ``await add.options(delay=5).enqueue(1, 2)``."""

    def __init__(self, fn: TaskFunction[P, R], overrides: dict[str, Any]) -> None:
        self._fn = fn
        self._overrides = overrides  # already checked by TaskFunction.options

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        fn = self._fn
        payload = payload_of(fn.entry, args, kwargs)
        task = build(fn.entry, payload, self._overrides, fn.manager.settings)
        return await fn.manager.submit_with_handle(task, fn.decode_result)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        return self._fn.manager.portal.call(self.enqueue(*args, **kwargs))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This call, not enqueued: its task, checked arguments and options."""
        payload = payload_of(self._fn.entry, args, kwargs, partial=True)
        return Signature(self._fn.name, payload, dict(self._overrides), manager=self._fn.manager)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """:meth:`s`, immutable: in a workflow it takes none of its parents' results."""
        payload = payload_of(self._fn.entry, args, kwargs, partial=True)
        return Signature(self._fn.name, payload, dict(self._overrides), True, self._fn.manager)


class TaskFunction(Generic[P, R]):
    """What ``@manager.task`` returns: still callable directly, plus ``enqueue``."""

    def __init__(self, manager: TaskManager, fn: Callable[P, Any], entry: RegisteredTask):
        self.manager = manager
        self.fn = fn
        self.entry = entry
        self.name = entry.name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.decode_result = result_decoder(fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def build(self, args: Sequence[Any], kwargs: dict[str, Any], **options: Any) -> Task:
        """Validate a call here, in the caller, and build its task (see ``build_task``)."""
        return self.manager.build_task(self.entry, args, kwargs, **options)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueue a call; arguments are checked against the signature first."""
        return await self.manager.submit_with_handle(self.build(args, kwargs), self.decode_result)

    async def enqueue_many(self, calls: Iterable[Sequence[Any]]) -> list[TaskHandle[R]]:
        """Enqueue one task per tuple of positional arguments, in one batch."""
        tasks = [self.build(args, {}) for args in calls]
        return await self.manager.submit_handles(tasks, self.decode_result)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A call of this task, not enqueued (``export.s(bucket="b1")``): the arguments
        given are checked against the signature here; some may be left out (typed loosely
        for that), as a workflow puts its parents' results first. What ``add_schedule``
        and the workflow primitives take."""
        return Signature(
            self.name, payload_of(self.entry, args, kwargs, partial=True), manager=self.manager
        )

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """:meth:`s`, immutable: in a workflow it waits for its parents but takes none
        of their results (``chain(a.s(), notify.si("done"))``)."""
        payload = payload_of(self.entry, args, kwargs, partial=True)
        return Signature(self.name, payload, immutable=True, manager=self.manager)

    def options(self, **overrides: Unpack[CallOptions]) -> TaskCall[P, R]:
        """This task with one call's options: ``await add.options(delay=5).enqueue(1, 2)``.
        Checked here: an unknown option or a value out of range is an error at once."""
        checked = check_options("call", overrides, where=f"task {self.name!r}: ")
        return TaskCall(self, checked)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """:meth:`enqueue` for synchronous code (runs on the manager's private loop)."""
        return self.manager.portal.call(self.enqueue(*args, **kwargs))


def result_decoder(fn: Callable[..., Any]) -> Callable[[Any], Any] | None:
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:
        return None
    if hint is None or hint is Any or hint is type(None):
        return None
    if hint is typing.NoReturn or hint is typing.Never:  # it never returns: nothing to decode
        return None
    name = getattr(fn, "__qualname__", repr(fn))
    return adapter_for(hint, f"task function {name}: its return type").validate_python


class TaskDecorator:
    def __init__(self, register: Callable[[Callable[..., Any]], TaskFunction[Any, Any]]):
        self._register = register

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> TaskFunction[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> TaskFunction[Any, Any]:
        return self._register(fn)
