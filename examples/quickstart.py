"""TaskManager quickstart on the in-memory backend (one process, nothing to set up).

Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import time

from bgcoor_core import PayloadError, TaskManager

manager = TaskManager(broker_url="memory://", storage_url="memory://")


@manager.task(max_retries=3, timeout=10)
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0.01)  # async tasks run on the worker's event loop
    return x + y


@manager.task
def slow_square(x: int) -> int:
    time.sleep(0.01)  # sync tasks run in the worker's thread pool, never blocking the loop
    return x * x


def from_sync_code() -> None:
    """Plain synchronous code (a thread without an event loop) uses the *_sync methods."""
    handle = slow_square.enqueue_sync(7)
    print(f"slow_square(7) = {handle.result_sync(timeout=5)}")


async def main() -> None:
    async with manager.worker(concurrency=4):  # an in-process worker pool
        handle = await add.enqueue(1, 2)  # arguments are checked against the signature here
        result = await handle.result(timeout=5)
        task = await handle.info()
        print(f"add(1, 2) = {result}")
        print(f"task {task.id}: {task.status} after {task.attempts} attempt(s)")

        handles = [await slow_square.enqueue(i) for i in range(5)]
        print(f"squares = {[await h.result(timeout=5) for h in handles]}")

        try:
            await add.enqueue("one", 2)  # type: ignore[arg-type]  # the checker sees it too
        except PayloadError as exc:
            print(f"refused at enqueue: {exc}")

        await asyncio.to_thread(from_sync_code)
    await manager.close()


if __name__ == "__main__":
    asyncio.run(main())
