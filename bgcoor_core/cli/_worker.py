"""``bgcoor worker APP``: serve tasks until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .. import __version__
from .._manager import TaskManager
from .._pool import WorkerPool
from ._app_loading import load_manager
from ._banner import local_results_warning, shown_url
from ._options import AppArgument, check_queue_list, split_queues
from ._output import CliError, cell, clean, logging_to_stderr, out_console
from ._reload import run_reloading

log = logging.getLogger("bgcoor.cli")


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


log_level_option = Annotated[
    LogLevel, typer.Option("--log-level", "-l", case_sensitive=False, help="Log level.")
]


def worker(
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
) -> None:
    """Run a worker for APP's tasks until SIGTERM or Ctrl+C (twice to force).

    The first signal stops taking tasks and lets running ones finish (up to
    BGCOOR_SHUTDOWN_GRACE seconds). A second one hands running tasks back at once.
    """
    if reload:
        if burst:
            raise CliError("--reload and --burst do not go together", exit_code=2)
        argv = ["worker", app, "--log-level", log_level.value]
        argv += ["--concurrency", str(concurrency)] if concurrency else []
        argv += ["--queues", queues] if queues else []
        argv += ["--no-scheduler"] if no_scheduler else []
        run_reloading(argv)
        return
    manager = load_manager(app)
    queue_list = split_queues(queues) if queues else None
    with logging_to_stderr(log_level.value):
        asyncio.run(_serve(manager, app, concurrency, queue_list, burst, not no_scheduler))


async def _serve(
    manager: TaskManager,
    app: str,
    concurrency: int | None,
    queues: list[str] | None,
    burst: bool,
    scheduler: bool = True,
) -> None:
    console = out_console()
    settings = manager.settings
    if not scheduler:  # this run only: the pool's scheduler service reads its settings
        settings = settings.model_copy(update={"scheduler": False})
    try:
        pool = WorkerPool(
            manager.broker,
            manager.storage,
            manager.registry,
            concurrency,
            settings=settings,
            host=manager.host,
            queues=queues,
        )
        console.print(_banner(manager, pool, app))
        # Printed once the pool has started and its signal handlers are in place: only then
        # is a SIGTERM a graceful stop, so "ready" is a promise scripts and tests rely on.
        await pool.run(
            on_ready=lambda: console.print(
                "[green]ready[/]: press Ctrl+C to stop (twice to force)"
            ),
            burst=burst,
        )
        console.print(f"worker stopped after {pool.processed} task(s)")
    finally:
        await manager.close()


def _banner(manager: TaskManager, pool: WorkerPool, app: str) -> Table:
    settings = manager.settings
    tasks = manager.registry.names()
    plugins = [
        info.name if info.version == "-" else f"{info.name} ({info.distribution} {info.version})"
        for info in manager.host.describe()
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.title = Text(f"bg-coor {__version__} worker", style="bold cyan")
    grid.title_justify = "left"
    grid.add_row("app", cell(app))
    grid.add_row("broker", cell(shown_url(settings.broker_url)))
    grid.add_row("storage", cell(shown_url(settings.storage_url)))
    warning = local_results_warning(settings.broker_url, settings.storage_url)
    if warning:
        log.warning("%s", warning)
        grid.add_row("warning", Text(clean(warning), "yellow"))
    grid.add_row("queues", cell(", ".join(pool.queues)))
    grid.add_row("concurrency", str(pool.concurrency))
    if tasks:
        grid.add_row(f"tasks ({len(tasks)})", cell(", ".join(tasks)))
    else:
        grid.add_row("tasks", Text("none registered: every task will be dead-lettered", "yellow"))
    grid.add_row("plugins", cell(", ".join(plugins) or "none"))
    grid.add_row("scheduler", _scheduler_row(manager, pool))
    return grid


def _scheduler_row(manager: TaskManager, pool: WorkerPool) -> str:
    if not pool.settings.scheduler:
        return "off"
    if manager.backends.schedules is None:  # nothing to fire (none may be declared then)
        return "off (the backends keep no schedules)"
    return f"on ({len(manager.registry.schedules())} declared)"
