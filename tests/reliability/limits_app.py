"""The worker application and producer declarations of ``test_limits.py``:

    python -m bgcoor_core.cli worker reliability.limits_app:manager

``rel.lim.rated(i)`` (``rate_limit="20/s"``) appends ``ok r<i>`` to the ledger of
``tasks.py`` and returns at once. ``rel.lim.keyed(tenant, i, ms)`` (``concurrency_limit=2``
per tenant) appends ``begin k<tenant>-<i>`` when it starts (so a run cut short by a SIGKILL
still shows when it began), sleeps ``ms`` milliseconds, then appends ``ok k<tenant>-<i>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bgcoor_core import TaskFunction, TaskManager

from .tasks import record

RATE = 20
CONCURRENCY = 2


def rated(i: int) -> None:
    record("ok", f"r{i}", time.time())


def keyed(tenant: str, i: int, ms: int) -> None:
    start = time.time()
    record("begin", f"k{tenant}-{i}", start)
    time.sleep(ms / 1000)
    record("ok", f"k{tenant}-{i}", start)


def _tenant(tenant: str, *_: Any, **__: Any) -> str:
    return tenant


@dataclass(frozen=True)
class LimitTasks:
    rated: TaskFunction[Any, None]
    keyed: TaskFunction[Any, None]


def declare(manager: TaskManager) -> LimitTasks:
    """Register both tasks on ``manager`` (the workers' and the test's producer: the limits
    travel with each call, as the producer declares them)."""
    return LimitTasks(
        manager.task(name="rel.lim.rated", rate_limit=f"{RATE}/s")(rated),
        manager.task(name="rel.lim.keyed", concurrency_limit=CONCURRENCY, limit_key=_tenant)(keyed),
    )


manager = TaskManager()
declare(manager)
