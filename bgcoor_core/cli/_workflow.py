"""``bgcoor workflow APP ID``: a workflow's status and every member with its own."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .._manager import TaskManager
from .._task import TaskStatus
from .._workflows import WorkflowState
from ._app_loading import run_with_manager
from ._options import AppArgument, JsonOption
from ._output import CliError, cell, out_console, print_json
from ._tasks import STATUS_STYLES


def workflow(
    app: AppArgument,
    workflow_id: Annotated[str, typer.Argument(metavar="ID", help="Workflow id.")],
    as_json: JsonOption = False,
) -> None:
    """A workflow's status and each member: node, task, id, status, what it waits for."""

    async def body(manager: TaskManager) -> dict[str, Any]:
        try:
            state = await manager.workflow(workflow_id).state()
        except LookupError as exc:
            raise CliError(str(exc)) from None
        records = {t: await manager.storage.get(t) for t in state.tasks}
        return as_data(state, {t: (r.status.value if r else "gone") for t, r in records.items()})

    data = run_with_manager(app, body)
    if as_json:
        print_json(data)
        return
    _print(data)


def as_data(state: WorkflowState, statuses: dict[str, str]) -> dict[str, Any]:
    """The workflow as ``--json`` prints it: enough to draw its graph."""
    return {
        "id": state.id,
        "status": state.status.value,
        "on_failure": state.graph.on_failure.value,
        "error": state.error,
        "created_at": state.created_at.isoformat(),
        "members": [
            {
                "node": node.key,
                "task": node.task,
                "id": state.tasks[node.key],
                "status": statuses[state.tasks[node.key]],
                "after": node.parents,
                "on_error": node.on_error,
                "errback": node.errback,
            }
            for node in state.graph.nodes
        ],
    }


def _print(data: dict[str, Any]) -> None:
    console = out_console()
    head = f"workflow {data['id']}: {data['status']} (on_failure={data['on_failure']})"
    console.print(cell(head))
    if data["error"]:
        console.print(cell(data["error"], "red"))
    table = Table(title=None)
    for column in ("node", "task", "id", "status", "after"):
        table.add_column(column)
    for member in data["members"]:
        after = ", ".join(map(str, member["after"]))
        if member["errback"]:
            after = "on error"
        status = member["status"]
        table.add_row(
            str(member["node"]),
            cell(member["task"]),
            cell(member["id"]),
            Text(status, STATUS_STYLES.get(TaskStatus(status), "") if status != "gone" else ""),
            cell(after),
        )
    console.print(table)
