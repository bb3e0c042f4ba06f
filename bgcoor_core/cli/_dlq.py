"""``bgcoor dlq list | requeue ID... | requeue --all | purge``: the dead-letter queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .._broker import DeadLetter
from .._manager import TaskManager
from ._app_loading import run_with_manager
from ._options import AppOption, JsonOption, LimitOption, QueueOption, check_task_ids
from ._output import CliError, cell, err_console, out_console, print_json, timestamp

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter queue: tasks that exhausted their retries or could not run.",
    no_args_is_help=True,
)


@dlq_app.command("list")
def list_dead(
    queue: QueueOption = "default",
    app: AppOption = None,
    limit: LimitOption = 100,
    as_json: JsonOption = False,
) -> None:
    """List the dead letters of a queue, oldest first."""

    async def body(manager: TaskManager) -> tuple[list[DeadLetter], int]:
        letters = await manager.broker.dead_letters(queue, limit=limit)
        total = (await manager.broker.stats(queue)).dead
        return letters, total

    letters, total = run_with_manager(app, body)
    if as_json:
        print_json({"queue": queue, "dead_letters": [_letter(d) for d in letters], "total": total})
        return
    console = out_console()
    if not letters:
        console.print(f"the dead-letter queue of {queue!r} is empty")
        return
    table = Table(title=Text(f"Dead letters of {queue!r}"), title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("attempts", justify="right")
    table.add_column("dead since", no_wrap=True)
    table.add_column("reason", overflow="fold", min_width=20)
    for letter in letters:
        task = letter.task
        table.add_row(
            cell(letter.id),
            cell(task.name if task else "<undecodable>"),
            str(task.attempts) if task else "-",
            timestamp(letter.dead_at),
            cell(letter.reason, "red"),
        )
    console.print(table)
    if total > len(letters):
        console.print(f"showing {len(letters)} of {total}; use --limit to see more")


def _letter(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter under stable keys; ``task`` and ``attempts`` are null when its body
    could not be decoded."""
    task = letter.task
    return {
        "id": letter.id,
        "queue": letter.queue,
        "task": task.name if task else None,
        "attempts": task.attempts if task else None,
        "dead_at": datetime.fromtimestamp(letter.dead_at, UTC).isoformat(),
        "reason": letter.reason,
    }


@dlq_app.command("requeue")
def requeue(
    ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...",
            help="Dead letters to requeue.",
            show_default=False,
            callback=check_task_ids,
        ),
    ] = None,
    requeue_all: Annotated[
        bool, typer.Option("--all", help="Requeue every dead letter of the queue.")
    ] = False,
    queue: QueueOption = "default",
    app: AppOption = None,
) -> None:
    """Put dead letters back in their queue for one more attempt each."""
    if bool(ids) == requeue_all:
        raise CliError("give the ids of the dead letters to requeue, or --all", exit_code=2)
    wanted = list(dict.fromkeys(ids or []))

    async def body(manager: TaskManager) -> list[str]:
        with err_console().status(f"requeueing dead letters of {queue!r}", spinner="dots"):
            return await manager.requeue_dead(queue, wanted or None)

    done = run_with_manager(app, body)
    console = out_console()
    for task_id in done:
        console.print(cell(task_id))
    console.print(f"requeued {len(done)} task(s) into {queue!r}")
    missing = [i for i in wanted if i not in done]
    if missing:
        raise CliError(f"not in the dead-letter queue of {queue!r}: {', '.join(missing)}")


@dlq_app.command("purge")
def purge(
    queue: QueueOption = "default",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    app: AppOption = None,
) -> None:
    """Delete every dead letter of a queue for good."""

    async def body(manager: TaskManager) -> int:
        count = (await manager.broker.stats(queue)).dead
        if (
            count
            and not yes
            and not typer.confirm(
                f"Delete {count} dead letter(s) from {queue!r} for good?", default=False
            )
        ):
            raise CliError("nothing purged (not confirmed; pass --yes to skip the question)")
        with err_console().status(f"purging dead letters of {queue!r}", spinner="dots"):
            return await manager.broker.purge_dead(queue)

    purged = run_with_manager(app, body)
    out_console().print(f"purged {purged} dead letter(s) from {queue!r}")
