"""``bgcoor cancel ID...`` and ``bgcoor purge --queue Q``: changing what waits to run."""

from __future__ import annotations

from typing import Annotated

import typer

from .._errors import TaskNotFoundError
from .._manager import TaskManager
from ._app_loading import run_with_manager
from ._options import AppOption, check_queue, check_task_ids
from ._output import CliError, cell, err_console, out_console


def cancel(
    ids: Annotated[
        list[str],
        typer.Argument(
            metavar="ID...", help="Tasks to cancel.", show_default=False, callback=check_task_ids
        ),
    ],
    app: AppOption = None,
) -> None:
    """Cancel tasks that have not finished; a running task's outcome will be dropped."""
    wanted = list(dict.fromkeys(ids))

    async def body(manager: TaskManager) -> list[str]:
        problems = []
        for task_id in wanted:
            try:
                if await manager.cancel(task_id):
                    out_console().print(cell(f"cancelled {task_id}"))
                    continue
                status = (await manager.get(task_id)).status.value
                problems.append(f"{task_id} already ended {status}")
            except TaskNotFoundError:
                problems.append(f"{task_id} unknown or expired")
        return problems

    problems = run_with_manager(app, body)
    if problems:
        raise CliError("not cancelled: " + "; ".join(problems))


def purge(
    queue: Annotated[
        str,
        typer.Option(
            "--queue",
            "-q",
            callback=check_queue,
            help="Queue to empty (required: this deletes tasks).",
            show_default=False,
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    app: AppOption = None,
) -> None:
    """Delete the tasks waiting in a queue (ready and scheduled), for good.

    Reserved tasks, which workers are running, stay; so do dead letters (bgcoor dlq purge).
    """

    async def body(manager: TaskManager) -> int:
        stats = await manager.broker.stats(queue)
        count = stats.ready + stats.scheduled
        question = f"Delete {count} waiting task(s) from {queue!r} for good?"
        if count and not yes and not typer.confirm(question, default=False):
            raise CliError("nothing purged (not confirmed; pass --yes to skip the question)")
        with err_console().status(f"purging {queue!r}", spinner="dots"):
            return await manager.broker.purge(queue)

    purged = run_with_manager(app, body)
    out_console().print(f"purged {purged} waiting task(s) from {queue!r}")
