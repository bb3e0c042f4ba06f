"""TaskManager: the front door. Decorate functions, enqueue them, await their results."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from ._admin import requeue_dead
from ._broker import Broker
from ._building import build, payload_of
from ._cancels import CancelSignals
from ._capabilities import check_capabilities
from ._composition import Graph
from ._errors import ResultTimeoutError, TaskNotFoundError
from ._executor import Executor
from ._failures import failed_error
from ._handles import TaskCall, TaskDecorator, TaskFunction, TaskHandle
from ._options import CallOptions, TaskDefaults
from ._options import check as check_options
from ._options import options as declared_options
from ._periodic import (
    NO_ARGUMENTS,
    ScheduleInfo,
    check_periodic_function,
    check_signature,
    describe,
    schedule_id,
    store_of,
)
from ._periodic import require as require_schedule
from ._plugins import PluginHost, build_plugin_host
from ._pool import WorkerPool
from ._portal import Portal
from ._settings import Settings, load_settings
from ._signature import Signature
from ._storage import Storage
from ._submitting import submit
from ._task import Task, TaskStatus
from ._task_registry import RegisteredTask, TaskOptions, TaskRegistry
from ._timetable import Schedule
from ._wiring import Backends
from ._workflow_handles import WorkflowHandle
from ._workflow_handles import submit as submit_graph
from ._workflows import WORKFLOW_HEADER

log = logging.getLogger("bgcoor.manager")

P = ParamSpec("P")
TASK_OPTION_NAMES = frozenset(declared_options("task")) - {"name"}
R = TypeVar("R")


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
        #: Pools started by :meth:`worker`, each with its event loop: :meth:`cancel`
        #: reaches a task one of them is running.
        self._pools: dict[WorkerPool, asyncio.AbstractEventLoop] = {}
        #: The cancel channel of the backends in use (looked up once per backends).
        self._signals: tuple[Backends, CancelSignals | None] | None = None

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
    def task(self, **options: Unpack[TaskDefaults]) -> TaskDecorator: ...

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

        return register(fn) if fn is not None else TaskDecorator(register)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        tz: str = "UTC",
        overlap: str = "allow",
        catchup: str = "latest",
        catchup_window: timedelta = timedelta(hours=1),
        id: str | None = None,
        **options: Unpack[TaskDefaults],
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
        """Register a function as a task that every scheduler enqueues on a schedule:
        ``@manager.periodic(cron="*/5 * * * *", tz="Europe/Paris")`` or
        ``@manager.periodic(every=timedelta(seconds=30))``.

        The function takes no arguments, except an optional ``scheduled_at`` (its tick,
        timezone-aware). Its schedule's id is ``id`` or the task's name; options are those
        of :meth:`task`. The expression and zone are checked here."""
        schedule = Schedule(
            cron=cron,
            every=every,
            tz=tz,
            overlap=overlap,
            catchup=catchup,
            catchup_window=catchup_window,
        )
        if id is not None:
            schedule_id(id)

        def register(func: Callable[P, R]) -> TaskFunction[P, R]:
            fn: TaskFunction[P, R] = self.task(**options)(func)
            check_periodic_function(fn.entry)
            definition = schedule.definition(id or fn.name, fn.name, NO_ARGUMENTS, {})
            self.registry.add_schedule(definition)
            return fn

        return register

    async def add_schedule(
        self,
        schedule_id_: str,
        signature: Signature,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        tz: str = "UTC",
        overlap: str = "allow",
        catchup: str = "latest",
        catchup_window: timedelta = timedelta(hours=1),
    ) -> None:
        """Store (or replace, by id) a schedule at run time: ``await manager.add_schedule(
        "nightly-export", export.s(bucket="b1"), cron="0 3 * * *")``. A replaced one keeps
        its state (paused, last tick)."""
        schedule = Schedule(
            cron=cron,
            every=every,
            tz=tz,
            overlap=overlap,
            catchup=catchup,
            catchup_window=catchup_window,
        )
        check_signature(self.registry, signature.task, signature.payload)
        definition = schedule.definition(
            schedule_id(schedule_id_),
            signature.task,
            signature.payload,
            signature.repeatable_options(),
        )
        await store_of(self.backends).put_schedules([definition])

    async def remove_schedule(self, schedule_id_: str) -> None:
        """Delete a stored schedule (a declared one comes back when a scheduler starts
        with that app again: remove it from the code too)."""
        store = store_of(self.backends)
        await require_schedule(store, await store.delete_schedule(schedule_id_), schedule_id_)

    async def pause_schedule(self, schedule_id_: str) -> None:
        """Stop firing it, from any process, until :meth:`resume_schedule`."""
        store = store_of(self.backends)
        found = await store.set_schedule_paused(schedule_id_, True)
        await require_schedule(store, found, schedule_id_)

    async def resume_schedule(self, schedule_id_: str) -> None:
        store = store_of(self.backends)
        found = await store.set_schedule_paused(schedule_id_, False)
        await require_schedule(store, found, schedule_id_)

    async def schedules(self) -> list[ScheduleInfo]:
        """Every stored schedule and the ones declared here, with their next fire times."""
        entries = await store_of(self.backends).get_schedules()
        return describe(entries, self.registry.schedules())

    async def submit_workflow(self, graph: Graph) -> WorkflowHandle:
        """Submit a compiled workflow (what ``chain(...).enqueue()`` and
        ``Workflow.enqueue()`` call): every member checked, then stored in one step."""
        return await submit_graph(self, graph)

    def workflow(self, workflow_id: str) -> WorkflowHandle:
        """A handle on a submitted workflow, by id."""
        return WorkflowHandle(self, workflow_id)

    # -- producing ---------------------------------------------------------------------

    async def submit(self, task: Task) -> TaskHandle[Any]:
        """Enqueue a ready-made :class:`Task` (its record is stored first)."""
        return await self.submit_with_handle(task, None)

    async def submit_with_handle(
        self, task: Task, decode: Callable[[Any], R] | None
    ) -> TaskHandle[R]:
        return (await self.submit_handles([task], decode))[0]

    async def submit_handles(
        self, tasks: Sequence[Task], decode: Callable[[Any], R] | None
    ) -> list[TaskHandle[R]]:
        """:meth:`submit_many`, and a handle on each task: on the task holding its unique
        key instead (``h.deduplicated``) when one did."""
        holders = await submit(self.backends, self.host, tasks, self.settings.enqueue_retries)
        if holders is None:
            return [TaskHandle(self, t.id, decode) for t in tasks]
        return [
            TaskHandle(self, task.id, decode)
            if holder is None
            else TaskHandle(self, holder, decode, deduplicated=True)
            for task, holder in zip(tasks, holders, strict=True)
        ]

    async def submit_many(self, tasks: Sequence[Task]) -> None:
        """Store the tasks' records, then push their messages (see :func:`._submitting.submit`:
        in one step where the backend allows, retried with the same ids when a connection
        breaks mid-call)."""
        await submit(self.backends, self.host, tasks, self.settings.enqueue_retries)

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
        payload = payload_of(task, args, kwargs or {})
        call = check_options("call", options, where=f"task {task.name!r}: ") if options else {}
        return build(task, payload, call, self.settings)

    # -- inspecting and changing -------------------------------------------------------

    def handle(self, task_id: str) -> TaskHandle[Any]:
        return TaskHandle(self, task_id)

    async def get(self, task_id: str) -> Task:
        task = await self.storage.get(task_id)
        if task is None:
            raise TaskNotFoundError(f"no task with id {task_id!r} (unknown or expired)")
        return task

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished; False if it already had.

        The record is stored ``cancelled`` (final: the task never runs again), then the
        workers are told: a running async task gets ``CancelledError`` within a second,
        whichever process runs it; a sync task's ``current_task().cancel_requested``
        becomes True (a thread cannot be stopped); a process-isolated task's child is
        killed. Whatever the task still returns is dropped.
        """
        task = await self.get(task_id)
        if task.status.is_final:
            return False
        task.status = TaskStatus.CANCELLED
        task.finished_at = datetime.now(UTC)
        # The lease token stays: a worker still running it then finds the record final
        # (not stale), stores nothing and acks the message.
        workflows = self.backends.workflows
        if workflows is not None and WORKFLOW_HEADER in task.headers:
            await workflows.save_member(task)  # counted in its workflow, in the same step
        else:
            await self.storage.save(task, ttl=self.settings.result_ttl)
        self.host.task_cancelled(task)
        self._stop_in_pools(task_id)
        await self._signal_cancel(task_id)
        return True

    async def _signal_cancel(self, task_id: str) -> None:
        """Publish the cancel on the backends' channel, for workers in other processes.
        Best effort: a worker that misses it still refuses the outcome (the record is
        final), and a backend without a channel is polled by its workers."""
        backends = self.backends
        if self._signals is None or self._signals[0] is not backends:
            self._signals = (backends, self.host.cancel_signals(backends.broker, backends.storage))
        signals = self._signals[1]
        if signals is None:
            return
        try:
            await signals.publish(task_id)
        except Exception as exc:
            log.warning(
                "task %s: cancelled, but the cancel signal was not sent (%s: %s); a worker "
                "running it drops its outcome when it settles",
                task_id,
                type(exc).__name__,
                exc,
            )

    def _stop_in_pools(self, task_id: str) -> None:
        """Interrupt ``task_id`` in this process's pools at once, each on its own loop
        (workers elsewhere hear of it through :meth:`_signal_cancel`)."""
        here = asyncio.get_running_loop()
        for pool, loop in list(self._pools.items()):
            if loop is here:
                pool.cancel(task_id)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(pool.cancel, task_id)

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> list[str]:
        """Put dead letters (all, or those in ``ids``) back in their queue for one more
        attempt each; return their ids (paging through the dead-letter queue)."""
        return await requeue_dead(self.backends, queue, ids)

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
        self._pools[pool] = asyncio.get_running_loop()
        try:
            yield pool
        finally:
            self._pools.pop(pool, None)
            await pool.shutdown()

    async def drain(
        self, *, queues: Sequence[str] | None = None, raise_errors: bool = False
    ) -> int:
        """Run everything ready in the queues, one at a time, in this task; return how many.

        For tests: with ``raise_errors`` the first task that does not succeed raises its
        error here (:class:`TaskFailedError` carrying the traceback and failure, and an
        instance of the original exception's class when that is found, as ``result()``).
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
            raise failed_error(task)

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


__all__ = ["ResultTimeoutError", "TaskCall", "TaskFunction", "TaskHandle", "TaskManager"]
