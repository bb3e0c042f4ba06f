"""The original design's example: broker, storage, registry and pool wired by hand.

Most code uses :class:`bgcoor_core.TaskManager` instead (see ``quickstart.py``); this shows
the pieces it assembles. Run it with ``python examples/original_design.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bgcoor_core import (
    MemoryBroker,
    MemoryStorage,
    Task,
    TaskRegistry,
    WorkerPool,
)


class MyTask:
    """A handler object: ``run(payload)`` receives the task's payload as it was enqueued."""

    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"greeting": f"hello, {payload['name']}"}


async def main() -> None:
    broker = MemoryBroker()
    storage = MemoryStorage()
    registry = TaskRegistry()
    registry.register("my_task", MyTask())

    pool = WorkerPool(broker, storage, registry, 4)
    await pool.start()

    task = Task.new("my_task", {"name": "world"}, 3)
    await broker.push(task)
    done = await storage.wait(task.id, timeout=10)

    await pool.shutdown()
    print(f"task {done.id} {done.name}: {done.status} after {done.attempts} attempt(s)")
    print(f"result: {done.result}")


if __name__ == "__main__":
    asyncio.run(main())
