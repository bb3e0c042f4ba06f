"""Tasks and a worker entry point for the process-based benchmarks (configured by env)."""

from __future__ import annotations

import asyncio

from bgcoor_core import TaskManager, WorkerPool

manager = TaskManager()


@manager.task(name="bench.noop", max_retries=0)
async def noop() -> None:
    return None


@manager.task(name="bench.echo", max_retries=0)
async def echo(value: int) -> int:
    return value


if __name__ == "__main__":
    pool = WorkerPool(manager.broker, manager.storage, manager.registry, settings=manager.settings)
    asyncio.run(pool.run())
