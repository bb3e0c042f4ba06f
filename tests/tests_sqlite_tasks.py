"""Producer-side declaration of the ``record`` task run by ``sqlite_app.py`` workers.

The producer declares the same signature under the same name, as a separate service
would; its body never runs in the producer.
"""

from __future__ import annotations

from typing import Any

from bgcoor_core import TaskFunction, TaskManager


def record_task(manager: TaskManager) -> TaskFunction[Any, int]:
    def record(i: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker processes only")

    return manager.task(name="record")(record)
