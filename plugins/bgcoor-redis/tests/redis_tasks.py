"""Producer-side declaration of the ``record`` task that ``redis_app.py`` workers run."""

from __future__ import annotations

from typing import Any

from bgcoor_core import TaskFunction, TaskManager


def record_task(manager: TaskManager) -> TaskFunction[Any, int]:
    async def record(i: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker processes only")

    return manager.task(name="record")(record)
