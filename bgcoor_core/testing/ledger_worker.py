"""The worker application of :class:`~bgcoor_core.testing.WorkerFleet`, configured by
``BGCOOR_*`` settings: ``bgcoor worker bgcoor_core.testing.ledger_worker``.

Each run of ``record(i, sleep=0.0)`` appends ``i pid start end`` to the file named by the
``LEDGER`` environment variable, after sleeping ``sleep`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import time

from bgcoor_core import TaskManager

manager = TaskManager()


@manager.task(name="record")
async def record(i: int, sleep: float = 0.0) -> int:
    start = time.time()
    await asyncio.sleep(sleep)
    with open(os.environ["LEDGER"], "a") as ledger:  # noqa: ASYNC230 - one short line
        ledger.write(f"{i} {os.getpid()} {start:.6f} {time.time():.6f}\n")
    return i
