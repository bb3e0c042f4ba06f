"""TaskManager: the front door. Decorate functions, enqueue them, await their results."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, overload

from pydantic import TypeAdapter

from ._broker import Broker
from ._capabilities import check_capabilities
from ._errors import (
    DuplicateTaskError,
    EnqueueUncertainError,
    PayloadError,
    ResultTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from ._executor import Executor
from ._handlers import FunctionHandler
from ._options import CallOptions, TaskDefaults
from ._options import check as check_options
from ._options import options as declared_options
from ._plugins import PluginHost, build_plugin_host
from ._pool import WorkerPool
from ._portal import Portal
from ._registry import RegisteredTask, TaskOptions, TaskRegistry
from ._settings import Settings, load_settings
from ._storage import Storage
from ._task import Task, TaskStatus
from ._wiring import Backends

P = ParamSpec("P")
#: Records or letters an admin operation loads at once.
ADMIN_PAGE = 500
TASK_OPTION_NAMES = frozenset(declared_options("task")) - {"name"}
R = TypeVar("R")


class TaskHandle(Generic[R]):
    """A reference to an enqueued task: its id, status and eventual result."""

    def __init__(
        self, manager: TaskManager, task_id: str, decode: Callable[[Any], R] | None = None
    ) -> None:
        self.manager = manager
        self.id = task_id
        self._decode = decode

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the task to finish and return its result.

        Raises :class:`TaskFailedError` (failed or dead, with the error and traceback),
        :class:`TaskCancelledError`, or :class:`ResultTimeoutError`.
        """
        task = await self.manager.storage.wait(self.id, timeout=timeout)
        return self._unwrap(task)

    def _unwrap(self, task: Task) -> R:
        if task.status is TaskStatus.SUCCEEDED:
            return self._decode(task.result) if self._decode else task.result
        if task.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(f"task {task.id} was cancelled")
        raise TaskFailedError(task.id, task.status, task.error, task.traceback)

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
        self._overrides = overrides

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        return await self._fn.manager.submit_with_handle(
            self._fn.build(args, kwargs, **self._overrides), self._fn.decode_result
        )

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        return self._fn.manager.portal.call(self.enqueue(*args, **kwargs))


class TaskFunction(Generic[P, R]):
    """What ``@manager.task`` returns: still callable directly, plus ``enqueue``."""

    def __init__(self, manager: TaskManager, fn: Callable[P, Any], entry: RegisteredTask):
        self.manager = manager
        self.fn = fn
        self.entry = entry
        self.name = entry.name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.decode_result = _result_decoder(fn)

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
        await self.manager.submit_many(tasks)
        return [TaskHandle(self.manager, t.id, self.decode_result) for t in tasks]

    def options(self, **overrides: Unpack[CallOptions]) -> TaskCall[P, R]:
        """This task with one call's options: ``await add.options(delay=5).enqueue(1, 2)``.
        Checked here: an unknown option or a value out of range is an error at once."""
        checked = check_options("call", overrides, where=f"task {self.name!r}: ")
        return TaskCall(self, checked)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """:meth:`enqueue` for synchronous code (runs on the manager's private loop)."""
        return self.manager.portal.call(self.enqueue(*args, **kwargs))


def _payload(task: RegisteredTask, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    if isinstance(task.handler, FunctionHandler):
        return task.handler.encode_arguments(args, kwargs)
    if len(args) == 1 and not kwargs:
        return args[0]
    raise PayloadError(
        f"task {task.name!r} is a handler object: pass exactly one argument, its payload"
    )


def _first(*values: int | None) -> int:
    for value in values:
        if value is not None:
            return value
    raise AssertionError("unreachable: settings always provide a default")


def _result_decoder(fn: Callable[..., Any]) -> Callable[[Any], Any] | None:
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:
        return None
    if hint is None or hint is Any or hint is type(None):
        return None
    adapter: TypeAdapter[Any] = TypeAdapter(hint)
    return adapter.validate_python


class TaskManager:
    """Registers tasks, enqueues them, and runs in-process workers.

    ``TaskManager()`` reads ``BGCOOR_*`` settings; keyword arguments override them, e.g.
    ``TaskManager(broker_url="memory://", storage_url="memory://")``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: TaskRegistry | None = None,
        plugins: Iterable[object] = (),
        **overrides: Any,
    ) -> None:
        self.settings = settings or load_settings(**overrides)
        self.registry = registry or TaskRegistry()
        self._plugins = list(plugins)
        self._host: PluginHost | None = None
        self._backends: Backends | None = None
        self._portal: Portal | None = None
        self._wiring = threading.RLock()  # first use may come from several threads at once

    # -- wiring ------------------------------------------------------------------------

    @property
    def host(self) -> PluginHost:
        host = self._host
        if host is not None:
            return host
        with self._wiring:
            if self._host is None:
                host = build_plugin_host(
                    plugins=self._plugins, disabled=self.settings.disable_plugins
                )
                host.register_tasks(self.registry)
                self._host = host  # published only once complete
            return self._host

    @property
    def backends(self) -> Backends:
        """The broker and storage in use (opened from the settings on first use)."""
        backends = self._backends
        if backends is not None:
            return backends
        with self._wiring:
            if self._backends is None:
                opened = Backends.open(self.host, self.settings)
                check_capabilities(opened.broker, self.registry)
                self._backends = opened
            return self._backends

    def use_backends(self, backends: Backends | None) -> Backends | None:
        """Work with ``backends`` from now on (``None``: open the settings' URLs again on
        next use); returns the previous ones, not closed. Tests swap in memory backends
        this way (the ``bgcoor_memory`` fixture)."""
        with self._wiring:
            if backends is not None:
                check_capabilities(backends.broker, self.registry)
            previous, self._backends = self._backends, backends
        return previous

    def _ensure_backends(self) -> tuple[Broker, Storage]:
        backends = self.backends
        return backends.broker, backends.storage

    @property
    def broker(self) -> Broker:
        return self.backends.broker

    @property
    def storage(self) -> Storage:
        return self.backends.storage

    @property
    def portal(self) -> Portal:
        if self._portal is None:
            self._portal = Portal()
        return self._portal

    # -- registering -------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> TaskFunction[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...
    @overload
    def task(self, **options: Unpack[TaskDefaults]) -> _TaskDecorator: ...

    def task(  # type: ignore[misc]  # the bare and the configured form share one body
        self, fn: Callable[..., Any] | None = None, /, **options: Any
    ) -> Any:
        """Register a function as a task: ``@manager.task`` or ``@manager.task(max_retries=3)``.

        Options are those of :class:`TaskDefaults`; options declared by plugins may be
        passed too (as keywords, or in ``extra={...}`` for typed code)."""
        name = options.pop("name", None)
        core = {k: options.pop(k) for k in list(options) if k in TASK_OPTION_NAMES}
        extra = {**core.pop("extra", {}), **options}

        def register(func: Callable[..., Any]) -> TaskFunction[Any, Any]:
            task_name = name or f"{func.__module__}.{func.__qualname__}".replace(".<locals>", "")
            plugin = self.host.task_options.validate(task_name, extra) if extra else {}
            entry = self.registry.register(task_name, func, TaskOptions(**core, extra=plugin))
            if self._backends is not None:
                check_capabilities(self._backends.broker, self.registry)
            return TaskFunction(self, func, entry)

        return register(fn) if fn is not None else _TaskDecorator(register)

    # -- producing ---------------------------------------------------------------------

    async def submit(self, task: Task) -> TaskHandle[Any]:
        """Enqueue a ready-made :class:`Task` (its record is stored first)."""
        return await self.submit_with_handle(task, None)

    async def submit_with_handle(
        self, task: Task, decode: Callable[[Any], R] | None
    ) -> TaskHandle[R]:
        await self.submit_many([task])
        return TaskHandle(self, task.id, decode)

    async def submit_many(self, tasks: Sequence[Task]) -> None:
        """Store the tasks' records, then push their messages.

        Every task is validated and encoded before anything is written. A backend that is
        broker and storage at once (:class:`AtomicEnqueue`) does both in one step.
        """
        backends = self.backends
        broker, storage = backends.broker, backends.storage
        host = self.host
        for task in tasks:  # plugins add headers before anything is encoded
            host.before_enqueue(task)
        messages = [broker.to_message(t) for t in tasks]
        atomic = backends.atomic_enqueue
        if atomic is not None:
            await self._idempotent(
                lambda: atomic.enqueue_atomically(tasks, messages), tasks, broker.transient_errors
            )
        else:
            stored = await self._idempotent(
                lambda: storage.save_many(tasks), tasks, storage.transient_errors
            )
            if stored is None or stored.status in (TaskStatus.PENDING, TaskStatus.SCHEDULED):
                await self._idempotent(
                    lambda: broker.push_messages(messages), tasks, broker.transient_errors
                )
        for task in tasks:
            host.task_enqueued(task)

    async def _idempotent(
        self,
        call: Callable[[], Awaitable[None]],
        tasks: Sequence[Task],
        transient: tuple[type[BaseException], ...],
    ) -> Task | None:
        """Run an enqueue step; when the connection fails mid-call, try again with the same
        tasks. A duplicate that is these very tasks (an earlier try, or an earlier submit
        that ended in :class:`EnqueueUncertainError`, went through) is success, and its
        stored record is returned; any other duplicate is an error. Out of retries, the
        error says the outcome is unknown."""
        retries = self.settings.enqueue_retries
        for attempt in range(retries + 1):
            try:
                await call()
                return None
            except DuplicateTaskError:
                record = await self._stored_as_is(tasks[0])
                if record is None:
                    raise
                return record
            except transient as exc:
                if attempt == retries:
                    raise EnqueueUncertainError([t.id for t in tasks], exc) from exc
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    async def _stored_as_is(self, task: Task) -> Task | None:
        """The stored record of ``task`` if it is this very task (its id, name, queue and
        creation time: the same call submitted again), else ``None``. Batches are stored
        all or none, so the first task speaks for all."""
        record = await self.storage.get(task.id)
        same = record is not None and (record.name, record.queue, record.created_at) == (
            task.name,
            task.queue,
            task.created_at,
        )
        return record if same else None

    async def enqueue(self, name: str, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Enqueue a task by name (it must be registered in this process).

        A function task takes its arguments; a handler-object task takes one argument,
        the payload its ``run(payload)`` receives.
        """
        return await self.submit(self.build_task(name, args, kwargs))

    def build_task(
        self,
        task: str | RegisteredTask,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> Task:
        """Check a call against a registered task and build the :class:`Task` to submit.

        Arguments are validated here, in the caller, so a wrong one fails before anything
        is enqueued; options (:class:`CallOptions`) default to the task's, then to the
        settings.
        """
        if isinstance(task, str):
            self.host  # noqa: B018 - loads plugins, whose tasks may be the one named
            task = self.registry.get(task)
        payload = _payload(task, args, kwargs or {})
        call = check_options("call", options, where=f"task {task.name!r}: ") if options else {}
        return self._task_of(task, payload, call)

    def _task_of(self, task: RegisteredTask, payload: Any, call: dict[str, Any]) -> Task:
        opts = task.options
        now = datetime.now(UTC)
        eta = call.get("eta")
        if "delay" in call:
            eta = now + timedelta(seconds=call["delay"])
        expires = call.get("expires")
        if expires is not None and not isinstance(expires, datetime):
            expires = now + timedelta(seconds=expires)
        headers = {**opts.headers, **call["headers"]} if "headers" in call else dict(opts.headers)
        return Task(
            name=task.name,
            payload=payload,
            queue=call.get("queue", opts.queue),
            priority=call.get("priority", opts.priority),
            eta=eta,
            max_retries=_first(
                call.get("max_retries"), opts.max_retries, self.settings.max_retries
            ),
            timeout=call.get("timeout", opts.timeout),
            result_ttl=call.get("result_ttl", opts.result_ttl),
            expires=expires,
            headers=headers,
            status=TaskStatus.SCHEDULED if eta is not None else TaskStatus.PENDING,
        )

    # -- inspecting and changing -------------------------------------------------------

    def handle(self, task_id: str) -> TaskHandle[Any]:
        return TaskHandle(self, task_id)

    async def get(self, task_id: str) -> Task:
        task = await self.storage.get(task_id)
        if task is None:
            raise TaskNotFoundError(f"no task with id {task_id!r} (unknown or expired)")
        return task

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished. A running task's outcome will be dropped."""
        task = await self.get(task_id)
        if task.status.is_final:
            return False
        task.status = TaskStatus.CANCELLED
        task.finished_at = datetime.now(UTC)
        # The lease token stays: a worker still running it then finds the record final
        # (not stale), stores nothing and acks the message.
        await self.storage.save(task, ttl=self.settings.result_ttl)
        self.host.task_cancelled(task)
        return True

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        """Put dead letters (all, or those in ``ids``) back in their queue for one more
        attempt each; return their ids. Pages through the dead-letter queue, so memory
        stays bounded however many letters wait there."""
        broker, storage = self._ensure_backends()
        wanted = None if ids is None else set(ids)
        moved: list[str] = []
        offset = 0
        while page := await broker.dead_letters(queue, limit=ADMIN_PAGE, offset=offset):
            chosen = [d for d in page if wanted is None or d.id in wanted]
            for letter in chosen:
                if letter.task is not None:
                    record = await storage.get(letter.id) or letter.task
                    record.status, record.lease_token = TaskStatus.PENDING, None
                    await storage.save(record)
            done = await broker.requeue_dead(queue, [d.id for d in chosen]) if chosen else []
            moved.extend(done)
            offset += len(page) - len(done)  # what stayed behind shifts the next page
        return moved

    # -- running -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def worker(
        self, concurrency: int | None = None, *, queues: Sequence[str] | None = None
    ) -> AsyncIterator[WorkerPool]:
        """An in-process worker pool, running for the duration of the ``async with``."""
        broker, storage = self._ensure_backends()
        pool = WorkerPool(
            broker,
            storage,
            self.registry,
            concurrency,
            settings=self.settings,
            host=self.host,
            queues=queues,
        )
        await pool.start()
        try:
            yield pool
        finally:
            await pool.shutdown()

    async def drain(
        self, *, queues: Sequence[str] | None = None, raise_errors: bool = False
    ) -> int:
        """Run everything ready in the queues, one at a time, in this task; return how many.

        For tests: with ``raise_errors`` the first task that does not succeed raises its
        error here (:class:`TaskFailedError` carrying the traceback).
        """
        broker, storage = self._ensure_backends()
        executor = Executor(broker, storage, self.registry, self.settings, host=self.host)
        count = 0
        while batch := await broker.reserve(
            list(queues or self.settings.queues), lease=self.settings.lease_seconds, limit=1
        ):  # one at a time: a batch's later leases would tick while earlier tasks run
            for reservation in batch:
                await executor.execute(reservation)
                count += 1
                if raise_errors:
                    await self._raise_if_failed(reservation.task.id)
        return count

    async def _raise_if_failed(self, task_id: str) -> None:
        task = await self.storage.get(task_id)
        if task is not None and task.status in (
            TaskStatus.RETRYING,
            TaskStatus.FAILED,
            TaskStatus.DEAD,
        ):
            raise TaskFailedError(task.id, task.status, task.error, task.traceback)

    async def close(self) -> None:
        """Close the broker and storage (and the private loop of the sync API)."""
        await self._close_backends()
        self._close_portal()

    def close_sync(self) -> None:
        """:meth:`close` for synchronous code."""
        if self._backends is not None:
            self.portal.call(self._close_backends())
        self._close_portal()

    async def _close_backends(self) -> None:
        backends = self.use_backends(None)
        if backends is not None:
            await backends.close()

    def _close_portal(self) -> None:
        if self._portal is not None:
            self._portal.close()
            self._portal = None


class _TaskDecorator:
    def __init__(self, register: Callable[[Callable[..., Any]], TaskFunction[Any, Any]]):
        self._register = register

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> TaskFunction[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> TaskFunction[Any, Any]:
        return self._register(fn)


__all__ = ["ResultTimeoutError", "TaskCall", "TaskFunction", "TaskHandle", "TaskManager"]
