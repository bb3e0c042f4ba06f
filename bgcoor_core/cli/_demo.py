"""``bgcoor demo``: a few hundred sample tasks through the configured (default) backends.

Some succeed, some fail once and succeed on retry, some always fail and are dead-lettered.
An in-process worker runs them while a progress bar follows; a summary table ends it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .._backend_registry import redact
from .._broker import Capability
from .._manager import TaskFunction, TaskManager
from .._task import Task
from ..hookspecs import hookimpl
from ._output import CliError, cell, err_console, out_console, quiet_logging

DEMO_QUEUE = "demo"
#: Seconds without any task settling after which the demo gives up.
STALL_SECONDS = 30.0
BATCH = 100


def kind_of(index: int) -> str:
    """Which sample task the ``index``-th demo task is: 1 in 20 broken, 3 in 20 flaky."""
    slot = index % 20
    if slot == 7:
        return "broken"
    if slot in (3, 11, 16):
        return "flaky"
    return "square"


@dataclass(eq=False)  # identity: pluggy tells plugins apart
class Tally:
    """A plugin observing this run's tasks as the in-process worker settles them."""

    ids: set[str] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    retries: int = 0
    retried: set[str] = field(default_factory=set)

    @property
    def settled(self) -> int:
        return self.succeeded + self.failed + self.dead

    @hookimpl
    def bgcoor_task_succeeded(self, task: Task) -> None:
        if task.id in self.ids:
            self.succeeded += 1

    @hookimpl
    def bgcoor_task_failed(self, task: Task) -> None:
        if task.id in self.ids:
            self.failed += 1

    @hookimpl
    def bgcoor_task_retrying(self, task: Task, delay: float) -> None:
        if task.id in self.ids:
            self.retries += 1
            self.retried.add(task.id)

    @hookimpl
    def bgcoor_task_dead_lettered(self, task: Task, reason: str) -> None:
        if task.id in self.ids:
            self.dead += 1


def register_demo_tasks(manager: TaskManager) -> dict[str, TaskFunction[Any, Any]]:
    """The sample tasks: quick retries (backoff 0.05 s) so the demo ends in seconds."""
    failed_once: set[int] = set()

    @manager.task(name="demo.square", queue=DEMO_QUEUE, max_retries=2, retry_backoff=0.05)
    async def square(n: int) -> int:
        await asyncio.sleep(random.uniform(0.001, 0.01))
        return n * n

    @manager.task(name="demo.flaky", queue=DEMO_QUEUE, max_retries=2, retry_backoff=0.05)
    async def flaky(n: int) -> str:
        await asyncio.sleep(random.uniform(0.001, 0.01))
        if n not in failed_once:
            failed_once.add(n)
            raise ConnectionError(f"demo: upstream busy for #{n}; the retry will succeed")
        return f"#{n} delivered"

    @manager.task(name="demo.broken", queue=DEMO_QUEUE, max_retries=2, retry_backoff=0.05)
    async def broken(n: int) -> None:
        raise ValueError(f"demo: #{n} always fails and ends in the dead-letter queue")

    return {"square": square, "flaky": flaky, "broken": broken}


def demo(
    tasks: Annotated[
        int, typer.Option("--tasks", "-n", min=1, max=100_000, help="How many tasks to run.")
    ] = 300,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=10_000,
            help="Worker slots (default: BGCOOR_CONCURRENCY, 10).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run sample tasks (some retry, some dead-letter) through a worker, with progress."""
    tally = Tally()
    manager = TaskManager(plugins=[tally])
    functions = register_demo_tasks(manager)
    with quiet_logging():
        summary = asyncio.run(_run_demo(manager, functions, tally, tasks, concurrency))
    out_console().print(summary)
    if urlsplit(manager.settings.broker_url).scheme != "memory":
        out_console().print(
            f"The dead letters stay in queue {DEMO_QUEUE!r}: try "
            f"'bgcoor dlq list --queue {DEMO_QUEUE}' and 'bgcoor status'."
        )


async def _run_demo(
    manager: TaskManager,
    functions: dict[str, TaskFunction[Any, Any]],
    tally: Tally,
    count: int,
    concurrency: int | None,
) -> Table:
    try:
        broker = manager.broker
        await broker.purge(DEMO_QUEUE)  # a clean slate for reruns on a persistent backend
        if Capability.DEAD_LETTER in broker.capabilities:
            await broker.purge_dead(DEMO_QUEUE)
        batch = [functions[kind_of(i)].build((i,), {}) for i in range(count)]
        tally.ids.update(task.id for task in batch)
        columns = (
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err_console()) as progress:
            await _enqueue(manager, batch, progress)
            elapsed = await _work(manager, tally, count, concurrency, progress)
        return _summary(manager, tally, count, elapsed)
    finally:
        await manager.close()


async def _enqueue(manager: TaskManager, tasks: Sequence[Task], progress: Progress) -> None:
    bar = progress.add_task("enqueueing", total=len(tasks), detail="")
    for start in range(0, len(tasks), BATCH):
        chunk = tasks[start : start + BATCH]
        await manager.submit_many(chunk)
        progress.advance(bar, len(chunk))


async def _work(
    manager: TaskManager, tally: Tally, count: int, concurrency: int | None, progress: Progress
) -> float:
    bar = progress.add_task("running", total=count, detail="")
    started = time.perf_counter()
    async with manager.worker(concurrency, queues=[DEMO_QUEUE]):
        last_settled, last_change = 0, time.monotonic()
        while tally.settled < count:
            await asyncio.sleep(0.05)
            detail = f"{tally.succeeded} ok, {tally.retries} retries, {tally.dead} dead"
            progress.update(bar, completed=tally.settled, detail=detail)
            if tally.settled != last_settled:
                last_settled, last_change = tally.settled, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                raise CliError(
                    f"demo stalled: {tally.settled} of {count} tasks settled and none in the "
                    f"last {STALL_SECONDS:g}s"
                )
        elapsed = time.perf_counter() - started
    return elapsed


def _summary(manager: TaskManager, tally: Tally, count: int, elapsed: float) -> Table:
    table = Table(
        title=cell(f"Demo summary ({redact(manager.settings.broker_url)})"),
        title_justify="left",
    )
    table.add_column("")
    table.add_column("", justify="right")
    table.show_header = False
    table.add_row("tasks", str(count))
    table.add_row(Text("succeeded", "green"), str(tally.succeeded))
    table.add_row(Text("retried", "yellow"), str(len(tally.retried)))
    table.add_row("retries", str(tally.retries))
    table.add_row(Text("dead-lettered", "red"), str(tally.dead))
    if tally.failed:
        table.add_row(Text("failed", "red"), str(tally.failed))
    table.add_row("elapsed", f"{elapsed:.2f} s")
    table.add_row("tasks per second", f"{count / elapsed:.1f}" if elapsed > 0 else "-")
    return table
