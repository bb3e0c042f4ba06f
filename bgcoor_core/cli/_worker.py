"""``bgcoor worker APP``: serve tasks until SIGTERM/SIGINT; with ``--processes N``, N
worker processes under one supervisor (:mod:`bgcoor_core._supervisor`)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import gc
import logging
import os
import sys
from typing import Annotated

import typer

from .._loops import run as run_loop
from .._manager import TaskManager
from .._pool import WorkerPool
from .._supervisor import ChildLink, Supervisor
from ._app_loading import load_manager
from ._banner import worker_banner
from ._options import AppArgument, check_queue_list, split_queues
from ._output import CliError, logging_to_stderr, out_console
from ._reload import run_reloading

log = logging.getLogger("bgcoor.cli")

READY = "[green]ready[/]: press Ctrl+C to stop (twice to force)"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


log_level_option = Annotated[
    LogLevel, typer.Option("--log-level", "-l", case_sensitive=False, help="Log level.")
]


def worker(
    ctx: typer.Context,
    app: AppArgument,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=10_000,
            help="Tasks run at once (default: BGCOOR_CONCURRENCY, 10).",
            show_default=False,
        ),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            metavar="A,B",
            callback=check_queue_list,
            help="Comma-separated queues to serve, first served first "
            "(default: BGCOOR_QUEUES, default).",
            show_default=False,
        ),
    ] = None,
    log_level: log_level_option = LogLevel.INFO,
    burst: Annotated[
        bool,
        typer.Option(
            "--burst", help="Exit (with 0) once the queues are empty and no task is running."
        ),
    ] = False,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Restart the worker when a Python file under the current directory changes "
            "(for development; needs bgcoor[reload]).",
        ),
    ] = False,
    no_scheduler: Annotated[
        bool,
        typer.Option(
            "--no-scheduler",
            help="Do not run the scheduler of periodic tasks in this worker (another worker "
            "or 'bgcoor scheduler' fires them; default: BGCOOR_SCHEDULER).",
        ),
    ] = False,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            help="Worker processes to run under one supervisor, which restarts one that "
            "dies and passes signals on to them all (1: this process is the worker).",
        ),
    ] = 1,
) -> None:
    """Run a worker for APP's tasks until SIGTERM or Ctrl+C (twice to force).

    The first signal stops taking tasks and lets running ones finish (up to
    BGCOOR_SHUTDOWN_GRACE seconds). A second one hands running tasks back at once.
    """
    options = WorkerRun(app, concurrency, queues, log_level.value, burst, not no_scheduler)
    if reload:
        if burst:
            raise CliError("--reload and --burst do not go together", exit_code=2)
        run_reloading(options.argv(processes))
        return
    try:
        link = ChildLink.from_environment()
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    if processes > 1 and link is None:
        root = ctx.find_root()
        _supervise(options, processes, debug=bool(root.params.get("debug")))
        return
    if link is not None:
        link.watch()
    manager = load_manager(app)
    tagged = link is not None and not logging.getLogger().handlers
    with logging_to_stderr(log_level.value):
        if tagged and link is not None:  # our own handler only, never the app's
            for handler in logging.getLogger().handlers:
                handler.addFilter(WorkerTag(link.index))
        run_loop(_serve(manager, options, link), manager.settings.event_loop)


@dataclasses.dataclass(frozen=True)
class WorkerRun:
    """The options of one ``bgcoor worker`` run that its children (or the reloader's
    restarted worker) are given again."""

    app: str
    concurrency: int | None
    queues: str | None
    log_level: str
    burst: bool
    scheduler: bool

    def argv(self, processes: int = 1) -> list[str]:
        """``worker APP ...`` with these options, for ``bgcoor`` (no ``--reload``)."""
        argv = ["worker", self.app, "--log-level", self.log_level]
        argv += ["--concurrency", str(self.concurrency)] if self.concurrency else []
        argv += ["--queues", self.queues] if self.queues else []
        argv += ["--burst"] if self.burst else []
        argv += [] if self.scheduler else ["--no-scheduler"]
        argv += ["--processes", str(processes)] if processes > 1 else []
        return argv

    def pool(self, manager: TaskManager) -> WorkerPool:
        settings = manager.settings
        if not self.scheduler:  # this run only: the pool's scheduler service reads its settings
            settings = settings.model_copy(update={"scheduler": False})
        return WorkerPool(
            manager.broker,
            manager.storage,
            manager.registry,
            self.concurrency,
            settings=settings,
            host=manager.host,
            queues=split_queues(self.queues) if self.queues else None,
        )


class WorkerTag(logging.Filter):
    """Begin a supervised child's log messages with ``[worker N]``, its index."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.tag = f"[worker {index}] "

    def filter(self, record: logging.LogRecord) -> bool:
        # Only a str message is prefixed: the tag holds no "%", so its arguments still fit.
        if isinstance(record.msg, str) and not record.msg.startswith(self.tag):
            record.msg = self.tag + record.msg
        return True


async def _serve(manager: TaskManager, options: WorkerRun, link: ChildLink | None) -> None:
    console = out_console()
    try:
        pool = options.pool(manager)
        if link is None:
            console.print(worker_banner(manager, pool, options.app))
        name = "worker" if link is None else f"worker {link.index} (pid {os.getpid()})"

        def ready() -> None:
            # What is loaded by now (the app, plugins, pydantic's schemas) lives as long
            # as the process: frozen, the collector no longer walks it in every full
            # collection, which a worker making objects for each task runs again and again.
            gc.collect()
            gc.freeze()
            # Only once the pool has started and its signal handlers are in place is a
            # SIGTERM a graceful stop, so "ready" is a promise scripts and tests rely on.
            if link is None:
                console.print(READY)
            else:
                console.print(f"{name} ready")
                link.ready()

        await pool.run(on_ready=ready, burst=options.burst)
        console.print(f"{name} stopped after {pool.processed} task(s)")
    finally:
        await manager.close()


def _supervise(options: WorkerRun, processes: int, *, debug: bool) -> None:
    """Print the banner, then run ``processes`` children of this command (each with
    ``--processes 1``) until a signal; exit with 1 when one did not stop cleanly."""
    manager = load_manager(options.app)
    root = [sys.executable, "-m", "bgcoor_core.cli", *(["--debug"] if debug else [])]
    supervisor = Supervisor([*root, *options.argv()], processes, burst=options.burst)
    with logging_to_stderr(options.log_level):
        code = asyncio.run(_run_supervisor(manager, options, supervisor))
    if code:
        raise typer.Exit(code)


async def _run_supervisor(manager: TaskManager, options: WorkerRun, supervisor: Supervisor) -> int:
    console = out_console()
    try:
        pool = options.pool(manager)
        console.print(worker_banner(manager, pool, options.app, supervisor.processes))
    finally:
        await manager.close()  # the children open their own connections
    code = await supervisor.run(
        on_ready=lambda: console.print(
            f"[green]ready[/]: {supervisor.processes} worker processes; "
            "press Ctrl+C to stop (twice to force)"
        )
    )
    console.print(
        f"supervisor stopped: {supervisor.processes} worker processes, "
        f"{supervisor.restarts} restart(s)"
    )
    return code
