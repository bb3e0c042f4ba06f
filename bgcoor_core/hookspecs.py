"""Hook specifications: every way a plugin extends bg-coor.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match
the specs below, published under the ``bgcoor`` entry-point group::

    [project.entry-points.bgcoor]
    myplugin = "myplugin.plugin"

Register-style hooks receive a typed registry and add to it; lifecycle hooks observe
tasks and return nothing. Hook implementations may omit arguments they do not need.

Every hook is called through pluggy, so ``tryfirst``/``trylast`` ordering and wrappers
(``@hookimpl(wrapper=True)``, a generator that yields once) work on all of them. An
observer (the lifecycle hooks, ``bgcoor_before_enqueue``) that raises is logged and the
others still run; a register-style hook that raises fails start-up with an error naming
the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager, AbstractContextManager

    import typer

    from ._backend_registry import BrokerRegistry, SerializerRegistry, StorageRegistry
    from ._broker import Broker
    from ._cancels import CancelSignals
    from ._context import CurrentTask
    from ._extensions import OptionRegistry, ServiceRegistry, WorkerOptionRegistry
    from ._payload_codecs import PayloadCodecRegistry
    from ._storage import Storage
    from ._task import Task
    from ._task_registry import TaskRegistry

PROJECT = "bgcoor"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker for plugin authors: decorate hook implementations with ``@hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
    """Provide brokers for URL schemes.

    Call ``brokers.add("redis", factory, test_url=...)`` once per scheme, where
    ``factory(url, context)`` returns a :class:`~bgcoor_core.Broker` and ``context`` is a
    :class:`~bgcoor_core.BackendContext` (settings and codec). ``test_url(tmp_path)``, if
    given, returns a URL the shared conformance suite may use for a throw-away backend.
    Two plugins adding the same scheme is a :class:`~bgcoor_core.DuplicateSchemeError`.

    :param brokers: The registry to add broker factories to.
    """


@hookspec
def bgcoor_register_storages(storages: StorageRegistry) -> None:
    """Provide storages for URL schemes; the storage twin of :func:`bgcoor_register_brokers`.

    When the broker and storage URLs are equal and the broker object is itself a
    :class:`~bgcoor_core.Storage`, it serves as both and no storage factory is called.

    :param storages: The registry to add storage factories to.
    """


@hookspec
def bgcoor_register_tasks(tasks: TaskRegistry) -> None:
    """Contribute task handlers; this is how a third-party handler package ships tasks.

    Call ``tasks.register("billing.charge", handler)`` with a function or an object that
    has a ``run(payload)`` method (sync or async). Called once per worker pool or manager
    that loads plugins.

    :param tasks: The registry of the manager or worker being assembled.
    """


@hookspec
def bgcoor_register_serializers(serializers: SerializerRegistry) -> None:
    """Provide serializers: message formats (see the ``Serializer`` protocol in
    ``bgcoor_core._codec`` for what ``dumps`` receives and ``loads`` returns, and
    ``bgcoor_core.testing.values.SerializerContract`` for the round trips they must pass).

    Which format encodes new messages is ``BGCOOR_SERIALIZER`` (a content type or the
    serializer's ``name``). Workers decode every installed format unless
    ``BGCOOR_ACCEPT_CONTENT`` lists them, except a serializer marked ``trusted_only``
    (pickle), which is accepted only when named there.

    :param serializers: The registry to add serializers to.
    """


@hookspec
def bgcoor_register_payload_codecs(codecs: PayloadCodecRegistry) -> None:
    """Provide payload codecs: steps task values pass through once serialised
    (compression, encryption; see the ``PayloadCodec`` protocol in
    ``bgcoor_core._payload_codecs``). The core provides ``zstd`` and ``aesgcm``.

    Call ``codecs.add("name", factory)``, where ``factory(settings)`` returns the codec
    (``name``, ``encode(data) -> (bytes, spec)``, ``decode(data, spec, limit) -> bytes``)
    or raises saying why it cannot work here. ``BGCOOR_PAYLOAD_CODECS`` lists the codecs
    new payloads and results pass through, in order; a value names the codecs it went
    through (``"zstd,aesgcm:k2"``), and a process opens it with any registered codec,
    built when first needed. Two plugins adding the same name is an error.

    :param codecs: The registry to add payload codec factories to.
    """


@hookspec
def bgcoor_task_enqueued(task: Task) -> None:
    """A task was accepted by the broker. Called in the producer.

    :param task: The task as enqueued (status ``pending`` or ``scheduled``).
    """


@hookspec
def bgcoor_task_started(task: Task) -> None:
    """A worker is about to run the task's handler (status ``running``).

    :param task: The task, with ``attempts`` already counting this attempt.
    """


@hookspec
def bgcoor_task_succeeded(task: Task) -> None:
    """The handler returned and its result is stored.

    :param task: The task in status ``succeeded`` with ``result`` set.
    """


@hookspec
def bgcoor_task_failed(task: Task) -> None:
    """The task failed for good without being dead-lettered (a non-retryable error).

    :param task: The task in status ``failed`` with ``error`` and ``traceback``.
    """


@hookspec
def bgcoor_task_retrying(task: Task, delay: float) -> None:
    """An attempt failed and the task will run again after ``delay`` seconds.

    :param task: The task in status ``retrying`` with the attempt's error.
    :param delay: Seconds until the next attempt (backoff with jitter).
    """


@hookspec
def bgcoor_task_dead_lettered(task: Task, reason: str) -> None:
    """The task was moved to the dead-letter queue.

    :param task: The task in status ``dead``.
    :param reason: Why, e.g. ``max_retries exceeded``, ``unknown task``, ``worker_lost``.
    """


@hookspec
def bgcoor_task_cancelled(task: Task) -> None:
    """The task was cancelled before it finished.

    :param task: The task in status ``cancelled``.
    """


@hookspec
def bgcoor_before_enqueue(task: Task) -> None:
    """Called in the producer for each task about to be pushed: the place to add headers
    (trace context, tenant, deploy version) by writing to ``task.headers``.

    Runs after the call was validated and before anything is stored. An implementation
    that raises is logged; the task is still enqueued.

    :param task: The task as it will be stored and pushed; ``task.headers`` may be changed.
    """


@hookspec
def bgcoor_wrap_execution(
    current: CurrentTask,
) -> AbstractContextManager[object] | AbstractAsyncContextManager[object] | None:
    """Run code around each attempt of a task on the worker: return a context manager
    (sync or async), or ``None`` to stay out of this task.

    It is entered just before the handler runs and exited just after, in the task's own
    context: a ``contextvars`` value set on entry is visible inside async task functions
    and inside sync ones running in threads, and :func:`~bgcoor_core.current_task` works.
    On exit ``current.result`` or ``current.error`` holds the outcome; an exception from
    the handler passes through the context manager (which may not swallow it). An
    exception raised by the context manager itself fails the attempt like the handler's
    own would. Wrappers nest in hook-call order: the first one returned is outermost.

    :param current: The running task: ``id``, ``name``, ``attempt``, ``headers``,
        ``task`` (the full record), ``cancel_requested``, then ``result``/``error``.
    """


@hookspec
def bgcoor_register_services(services: ServiceRegistry) -> None:
    """Add long-running worker services (a scheduler loop, a metrics server, a registry
    heartbeat), started with each worker pool and stopped with it.

    Call ``services.add("name", run)`` where ``run(pool)`` is a coroutine function that
    serves until it is cancelled; the pool starts every service after it started
    reserving and cancels them after its last task settled. A service that raises is
    logged and restarted with a backoff; it never stops the pool.

    :param services: The registry of the pool being started.
    """


@hookspec
def bgcoor_register_task_options(options: OptionRegistry) -> None:
    """Declare extra task options a plugin reads (a tenant, a cost centre), accepted by
    ``@manager.task(...)`` beside the core's and validated as strictly.

    Call ``options.add("tenant", str | None, default=None, help="...")``. A task's
    values are in ``registered.options.extra`` (the plugin's options by name). An unknown
    option, or a value of the wrong type, is an error at decoration time naming the option.

    :param options: The registry of task options.
    """


@hookspec
def bgcoor_register_commands(cli: typer.Typer) -> None:
    """Add ``bgcoor`` subcommands: ``@cli.command()`` on the functions to add.

    A command that needs the application's manager takes the usual ``APP`` argument and
    loads it with ``bgcoor_core.cli.run_with_manager``. Plugin settings belong in a
    pydantic-settings model of the plugin's own, with a ``BGCOOR_<PLUGIN>_`` prefix.

    :param cli: The ``bgcoor`` Typer application.
    """


@hookspec
def bgcoor_register_worker_options(options: WorkerOptionRegistry) -> None:
    """Add options to ``bgcoor worker`` (a metrics port, say), for a plugin's settings.

    Call ``options.add("--metrics-port", env="BGCOOR_METRICS_PORT", type=int,
    help="...")``. A value given on the command line is exported to that environment
    variable before the application is imported, so the plugin's own pydantic-settings
    model reads it, as it would a deployment's. Only installed plugins (entry points) can
    add options: the command line is parsed before the application is loaded.

    :param options: The registry of ``bgcoor worker`` options.
    """


@hookspec(firstresult=True)
def bgcoor_cancel_signals(broker: Broker, storage: Storage) -> CancelSignals | None:
    """Offer a channel that carries cancel signals between processes for these backends:
    return a :class:`~bgcoor_core._cancels.CancelSignals` (``publish(task_id)`` and
    ``subscribe(on_cancel, on_gap)``), or ``None`` for backends the plugin does not serve.

    ``TaskManager.cancel()`` stores the record ``cancelled``, then publishes; every worker
    pool subscribes while it runs and interrupts the task if it holds it, so a running task
    is stopped within a second of a cancel from any process. The first implementation that
    returns a channel wins. Without one (SQLite, say) a pool reads its running tasks'
    records every half second instead. The signal need only be fast, not reliable: the
    stored ``cancelled`` record is the truth, so a task whose signal is lost runs on but
    its outcome is refused when it settles, and the pool reads its running tasks' records
    each time the subscription calls ``on_gap`` (on every (re)connection). Called once per
    pool and once per manager's backends.

    :param broker: The broker the pool or manager works with.
    :param storage: Its storage (possibly the same object).
    """
