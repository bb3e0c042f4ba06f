"""``bgcoor schedules APP``: every schedule, stored or declared, and pausing, resuming or
removing a stored one from any process."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.table import Table
from rich.text import Text

from .._errors import UnknownScheduleError
from .._manager import TaskManager
from .._periodic import ScheduleInfo
from ._app_loading import run_with_manager
from ._options import AppArgument, JsonOption
from ._output import CliError, cell, out_console, print_json


class Action(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    REMOVE = "remove"


#: What each action prints once done.
DONE = {Action.PAUSE: "paused", Action.RESUME: "resumed", Action.REMOVE: "removed"}


def _id_option(action: Action, does: str) -> Any:
    return typer.Option(f"--{action.value}", metavar="ID", help=does, show_default=False)


PauseOption = Annotated[
    str | None,
    _id_option(Action.PAUSE, "Stop firing this stored schedule, from any process, until --resume."),
]
ResumeOption = Annotated[str | None, _id_option(Action.RESUME, "Fire this paused schedule again.")]
RemoveOption = Annotated[
    str | None,
    _id_option(
        Action.REMOVE,
        "Delete this stored schedule (one APP declares is stored again by the next scheduler).",
    ),
]


def schedules(
    app: AppArgument,
    pause: PauseOption = None,
    resume: ResumeOption = None,
    remove: RemoveOption = None,
    as_json: JsonOption = False,
) -> None:
    """APP's schedules and the stored ones: next fire times, last tick and its task,
    counters. With --pause, --resume or --remove ID (one at a time), change one instead."""
    chosen = [(a, v) for a, v in zip(Action, (pause, resume, remove), strict=True) if v is not None]
    if len(chosen) > 1:
        raise CliError("give one of --pause, --resume, --remove at a time", exit_code=2)
    if chosen:
        if as_json:
            raise CliError(
                f"--json lists schedules; it does not go with --{chosen[0][0]}", exit_code=2
            )
        action, schedule_id = chosen[0]
        note = run_with_manager(app, lambda manager: _change(manager, action, schedule_id))
        out_console().print(cell(f"{DONE[action]} schedule {schedule_id!r}{note}"))
        return
    infos = run_with_manager(app, TaskManager.schedules)
    if as_json:
        print_json([as_data(info) for info in infos])
        return
    _print(infos, app)


async def _change(manager: TaskManager, action: Action, schedule_id: str) -> str:
    """Apply ``action``; what the confirmation adds (a removed schedule still declared)."""
    operation = {
        Action.PAUSE: manager.pause_schedule,
        Action.RESUME: manager.resume_schedule,
        Action.REMOVE: manager.remove_schedule,
    }[action]
    try:
        await operation(schedule_id)
    except UnknownScheduleError as exc:
        if not _declared(manager, schedule_id):
            raise
        raise UnknownScheduleError(
            f"{exc}; {schedule_id!r} is declared in the app but no scheduler has stored it "
            "yet (start a worker or 'bgcoor scheduler')"
        ) from None
    if action is Action.REMOVE and _declared(manager, schedule_id):
        return " (it is declared in the app: the next scheduler to start stores it again)"
    return ""


def _declared(manager: TaskManager, schedule_id: str) -> bool:
    """Whether APP declares it (asked after the backends opened: plugins had their say)."""
    return any(d.id == schedule_id for d in manager.registry.schedules())


def as_data(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule under stable keys; times ISO 8601 in the schedule's zone."""
    definition, state = info.definition, info.state
    zone = _zone(definition.tz)
    return {
        "id": info.id,
        "task": definition.task,
        "expression": info.expression,
        "cron": definition.cron,
        "every_seconds": None if definition.every_ms is None else definition.every_ms / 1000,
        "tz": definition.tz,
        "overlap": definition.overlap.value,
        "catchup": definition.catchup.value,
        "stored": info.stored,
        "paused": state.paused,
        "next_times": [t.astimezone(zone).isoformat() for t in info.next_times],
        "last_tick": _iso(state.last_tick_ms, zone),
        "last_task_id": state.last_task_id,
        "buffered_tick": _iso(state.buffered_tick_ms, zone),
        "fired": state.fired,
        "skipped": state.skipped,
        "missed": state.missed,
    }


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):  # a zone this machine lacks: UTC, not a failure
        return ZoneInfo("UTC")


def _iso(ms: int | None, zone: ZoneInfo) -> str | None:
    return None if ms is None else _at(ms).astimezone(zone).isoformat()


def _shown(moment: datetime, zone: ZoneInfo) -> str:
    """To the second, in the schedule's zone, with its offset (``Z`` for UTC)."""
    text = moment.astimezone(zone).isoformat(timespec="seconds")
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def _state(info: ScheduleInfo) -> Text:
    if not info.stored:
        return Text("not stored yet", "yellow")
    if info.state.paused:
        return Text("paused", "yellow")
    if info.state.buffered_tick_ms is not None:
        return Text("active, 1 buffered", "green")
    return Text("active", "green")


def _print(infos: list[ScheduleInfo], app: str) -> None:
    console = out_console()
    if not infos:
        console.print(cell(f"no schedules: none stored, none declared in {app}"))
        return
    table = Table(title=Text("Schedules"), title_justify="left")
    table.add_column("id", overflow="fold")
    table.add_column("task", overflow="fold")
    table.add_column("schedule", overflow="fold")
    table.add_column("tz", no_wrap=True)
    table.add_column("next", overflow="fold")
    table.add_column("last tick", no_wrap=True)
    table.add_column("last task", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for column in ("fired", "skipped", "missed"):
        table.add_column(column, justify="right")
    for info in infos:
        state, zone = info.state, _zone(info.definition.tz)
        last = "-" if state.last_tick_ms is None else _shown(_at(state.last_tick_ms), zone)
        table.add_row(
            cell(info.id),
            cell(info.definition.task),
            cell(info.expression),
            cell(info.definition.tz),
            cell(", ".join(_shown(t, zone) for t in info.next_times) or "-"),
            last,
            cell(state.last_task_id or "-"),
            _state(info),
            str(state.fired),
            str(state.skipped),
            str(state.missed),
        )
    console.print(table)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
