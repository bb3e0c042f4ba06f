"""``bgcoor tasks``: task records by status, name and queue (failed tasks are not dead
letters, so this is where their ids are found)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .._errors import UnknownTaskError
from .._manager import TaskManager
from .._task import Task, TaskStatus
from ._app_loading import run_with_manager
from ._options import (
    AppOption,
    JsonOption,
    LimitOption,
    check_optional_task_id,
    check_queue,
)
from ._output import cell, out_console, print_json, timestamp
from ._tasks import STATUS_STYLES

#: Records asked of the storage at once: memory stays bounded whatever ``--limit`` is.
PAGE = 500


@dataclass(frozen=True, slots=True)
class Listing:
    tasks: list[Task]
    #: The ``--after`` value that continues the listing, or ``None`` when it is complete.
    next_after: str | None


def tasks(
    status: Annotated[
        TaskStatus | None,
        typer.Option(
            "--status",
            "-s",
            case_sensitive=False,
            help="Only tasks in this status.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Only this task (with --app, a short name such as 'add' finds 'jobs.add').",
            show_default=False,
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue", "-q", callback=check_queue, help="Only this queue.", show_default=False
        ),
    ] = None,
    limit: LimitOption = 100,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            metavar="ID",
            callback=check_optional_task_id,
            help="Start after this id (what the previous listing said to continue with).",
            show_default=False,
        ),
    ] = None,
    app: AppOption = None,
    as_json: JsonOption = False,
) -> None:
    """Task records, oldest first, filtered by status, task name and queue."""

    async def body(manager: TaskManager) -> Listing:
        wanted = _task_name(manager, name)
        return await list_tasks(manager, status, wanted, queue, limit, after)

    listing = run_with_manager(app, body)
    if as_json:
        print_json(
            {"tasks": [summary(task) for task in listing.tasks], "next_after": listing.next_after}
        )
        return
    _print(listing, limit)


def _task_name(manager: TaskManager, name: str | None) -> str | None:
    """``name`` as registered: a short name that one registered task ends in is that task;
    anything else is taken as given (records may be of tasks this app does not know)."""
    if name is None:
        return None
    manager.host  # noqa: B018 - plugins contribute their tasks when the host is built
    try:
        return manager.registry.resolve(name).name
    except UnknownTaskError:
        return name


async def list_tasks(
    manager: TaskManager,
    status: TaskStatus | None,
    name: str | None,
    queue: str | None,
    limit: int,
    after: str | None,
) -> Listing:
    """Up to ``limit`` records after ``after``, read :data:`PAGE` at a time."""
    found: list[Task] = []
    cursor = after
    while len(found) <= limit:  # one more than shown tells whether the listing goes on
        size = min(PAGE, limit + 1 - len(found))
        page = await manager.storage.list(
            status=status, name=name, queue=queue, limit=size, after=cursor
        )
        if not page:  # not "shorter than asked": a page skips records it cannot decode
            break
        found.extend(page)
        cursor = page[-1].id
    more = len(found) > limit
    shown = found[:limit]
    return Listing(shown, shown[-1].id if more and shown else None)


def summary(task: Task) -> dict[str, Any]:
    """A record's listing fields under stable keys (``inspect --json`` has all of it)."""
    return {
        "id": task.id,
        "name": task.name,
        "status": task.status.value,
        "queue": task.queue,
        "priority": task.priority,
        "attempts": task.attempts,
        "max_retries": task.max_retries,
        "created_at": _iso(task.created_at),
        "eta": _iso(task.eta),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "error": task.error,
    }


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _print(listing: Listing, limit: int) -> None:
    console = out_console()
    if not listing.tasks:
        console.print("no tasks match")
        return
    table = Table(title=Text("Tasks"), title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("queue", overflow="fold")
    table.add_column("attempts", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("finished", no_wrap=True)
    table.add_column("error", overflow="fold", min_width=20)
    for task in listing.tasks:
        table.add_row(
            cell(task.id),
            cell(task.name),
            Text(task.status.value, STATUS_STYLES.get(task.status, "")),
            cell(task.queue),
            str(task.attempts),
            timestamp(task.created_at),
            timestamp(task.finished_at),
            cell(task.error or "", "red"),
        )
    console.print(table)
    if listing.next_after is not None:
        console.print(
            cell(f"showing the first {limit}; continue with --after {listing.next_after}")
        )
