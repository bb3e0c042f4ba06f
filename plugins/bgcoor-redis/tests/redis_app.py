"""A worker application for the multi-process Redis tests (configured by BGCOOR_* env).

Run as ``python redis_app.py``; each execution of ``record`` appends one ledger line.
"""

from __future__ import annotations

import asyncio
import os
import time

from bgcoor_core import TaskManager, WorkerPool

manager = TaskManager()


@manager.task(name="record")
async def record(i: int, sleep: float = 0.0) -> int:
    """Append one ledger line per execution: index, pid, start, end."""
    start = time.time()
    await asyncio.sleep(sleep)
    with open(os.environ["LEDGER"], "a") as ledger:  # noqa: ASYNC230 - one short line
        ledger.write(f"{i} {os.getpid()} {start:.6f} {time.time():.6f}\n")
    return i


if __name__ == "__main__":
    pool = WorkerPool(manager.broker, manager.storage, manager.registry, settings=manager.settings)
    asyncio.run(pool.run())
