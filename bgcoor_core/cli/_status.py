"""``bgcoor status``: queue depths and task counts by status."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .._backend_registry import redact
from .._broker import QueueStats
from .._manager import TaskManager
from .._task import TaskStatus
from ._app_loading import run_with_manager
from ._options import AppOption, JsonOption
from ._output import cell, out_console, print_json
from ._tasks import STATUS_STYLES


@dataclass(frozen=True, slots=True)
class Snapshot:
    broker_url: str
    storage_url: str
    queues: dict[str, QueueStats]
    counts: dict[TaskStatus, int]


def status(app: AppOption = None, as_json: JsonOption = False) -> None:
    """Queue depths (ready, scheduled, reserved, dead) and task counts by status."""
    snapshot = run_with_manager(app, take_snapshot)
    if as_json:
        print_json(as_data(snapshot))
        return
    out_console().print(render(snapshot))


def as_data(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot under stable keys: every status is a key of ``tasks``."""
    return {
        "broker_url": snapshot.broker_url,
        "storage_url": snapshot.storage_url,
        "queues": {name: dataclasses.asdict(stats) for name, stats in snapshot.queues.items()},
        "tasks": {s.value: snapshot.counts.get(s, 0) for s in TaskStatus},
        "total": sum(snapshot.counts.values()),
    }


async def take_snapshot(manager: TaskManager) -> Snapshot:
    broker, storage = manager.broker, manager.storage
    names = set(await broker.queues()) | set(manager.settings.queues)
    names |= {manager.registry.get(name).options.queue for name in manager.registry.names()}
    queues = {name: await broker.stats(name) for name in sorted(names)}
    counts = await storage.counts()
    return Snapshot(
        redact(manager.settings.broker_url), redact(manager.settings.storage_url), queues, counts
    )


def render(snapshot: Snapshot) -> Group:
    header = Text.assemble(
        ("broker ", "bold"),
        cell(snapshot.broker_url),
        ("   storage ", "bold"),
        cell(snapshot.storage_url),
    )
    queues = Table(title=Text("Queues"), title_justify="left")
    queues.add_column("queue")
    for column in ("ready", "scheduled", "reserved", "dead"):
        queues.add_column(column, justify="right")
    for name, stats in snapshot.queues.items():
        queues.add_row(
            cell(name),
            str(stats.ready),
            str(stats.scheduled),
            str(stats.reserved),
            Text(str(stats.dead), "red" if stats.dead else ""),
        )
    tasks = Table(title=Text("Tasks by status"), title_justify="left")
    tasks.add_column("status")
    tasks.add_column("tasks", justify="right")
    for task_status in TaskStatus:
        count = snapshot.counts.get(task_status, 0)
        tasks.add_row(Text(task_status.value, STATUS_STYLES.get(task_status, "")), str(count))
    tasks.add_section()
    tasks.add_row(Text("total", "bold"), str(sum(snapshot.counts.values())))
    if not snapshot.queues:
        queues.caption = "no queues yet"
    return Group(header, Text(), queues, Text(), tasks)
