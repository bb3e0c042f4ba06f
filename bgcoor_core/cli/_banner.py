"""The worker's banner: what it serves and with what, its backends' URLs (redacted; a
SQLite file by its absolute path), a warning when results would stay where no producer can
read them, and, under a supervisor, how many worker processes run."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from rich.table import Table
from rich.text import Text

from .. import __version__
from .._backend_registry import redact
from .._manager import TaskManager
from .._pool import WorkerPool
from ._output import cell, clean
from ._reach import IN_PROCESS

log = logging.getLogger("bgcoor.cli")


def worker_banner(manager: TaskManager, pool: WorkerPool, app: str, processes: int = 1) -> Table:
    """The table a worker prints before it starts. With ``processes`` above 1 (a
    supervisor's), a ``processes`` row, and the concurrency said to be per process."""
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
    if processes > 1:
        grid.add_row("processes", str(processes))
        grid.add_row(
            "concurrency", f"{pool.concurrency} per process ({pool.concurrency * processes} in all)"
        )
    else:
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


def sqlite_file(url: str) -> str | None:
    """The absolute path of the file a ``sqlite://`` URL names (relative URLs are relative
    to the current directory), or ``None`` for another URL or an in-memory database."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "sqlite" or parts.netloc:
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return os.path.abspath(path)


def shown_url(url: str) -> str:
    """``url`` redacted, and for a SQLite file its absolute path: ``sqlite:///bgcoor.db``
    says nothing about which directory's file a worker uses."""
    path = sqlite_file(url)
    shown = redact(url)
    written = urlsplit(url).path[1:]  # sqlite:////srv/a.db: already absolute
    return f"{shown} ({path})" if path and path != written else shown


def local_results_warning(broker_url: str, storage_url: str) -> str | None:
    """A warning when tasks come through a server but their records stay in this machine's
    SQLite file (or this process's memory): a producer elsewhere enqueues fine, then
    waits for results it can never read."""
    broker = urlsplit(broker_url).scheme.lower()
    storage = urlsplit(storage_url).scheme.lower()
    if broker in IN_PROCESS or storage not in IN_PROCESS:
        return None
    where = sqlite_file(storage_url) or "this process's memory"
    return (
        f"the broker is a server ({broker}://) but task records and results are kept in "
        f"{where}: producers on other machines will never see them; point "
        "BGCOOR_STORAGE_URL at a server too"
    )
