"""The worker application of ``test_cancel_across_processes.py``:

    python -m bgcoor_core.cli worker reliability.cancel_app:manager

Each task appends ``<what> <pid> <time>`` lines to the file ``marks`` it is given (one
``write`` per line), so the test, in another process, sees when it started, when it was
told of its cancel and which process ran it:

* ``rel.cancel.waits`` (async) waits an hour; ``cancelled`` when ``CancelledError`` comes.
* ``rel.cancel.polls`` (sync, in a thread) polls ``current_task().cancel_requested``;
  ``requested`` once it is True.
* ``rel.cancel.sleeps`` (``isolation="process"``) sleeps an hour in a child; only a kill
  stops it (``woke`` would say it was not).
* ``rel.cancel.segfaults`` (``isolation="process"``, no retries) kills its own child with
  SIGSEGV every time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgcoor_core import TaskFunction, TaskManager, current_task


def mark(marks: str, what: str) -> None:
    line = f"{what} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def marked(marks: str, what: str) -> list[tuple[int, float]]:
    """The (pid, time) of every ``what`` line in ``marks``."""
    path = Path(marks)
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(pid), float(at)) for name, pid, at in lines if name == what]


async def waits(marks: str) -> str:
    mark(marks, "start")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        mark(marks, "cancelled")
        raise
    return "woke"


def polls(marks: str) -> str:
    mark(marks, "start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if current_task().cancel_requested:
            mark(marks, "requested")
            return "stopped"
        time.sleep(0.005)
    return "never told"


def sleeps(marks: str) -> str:
    mark(marks, "start")
    time.sleep(3600)
    mark(marks, "woke")
    return "woke"


def segfaults(marks: str) -> None:
    mark(marks, "start")
    os.kill(os.getpid(), signal.SIGSEGV)


@dataclass(frozen=True)
class CancelTasks:
    waits: TaskFunction[Any, str]
    polls: TaskFunction[Any, str]
    sleeps: TaskFunction[Any, str]
    segfaults: TaskFunction[Any, None]


def declare(manager: TaskManager) -> CancelTasks:
    """Register the tasks on ``manager`` (the workers', and the test's producer)."""
    return CancelTasks(
        manager.task(name="rel.cancel.waits", max_retries=3)(waits),
        manager.task(name="rel.cancel.polls", max_retries=3)(polls),
        manager.task(name="rel.cancel.sleeps", isolation="process", max_retries=3)(sleeps),
        manager.task(name="rel.cancel.segfaults", isolation="process", max_retries=0)(segfaults),
    )


manager = TaskManager()
declare(manager)
