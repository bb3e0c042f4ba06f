"""Hard timeouts in a row: does a pool of process-isolated children stay whole?

    python benchmarks/isolation_timeouts.py [--n 1000] [--children 3]

Prints numbers; asserts that every task was recorded as timed out and that, afterwards,
``--children`` tasks ran at once, each in a child of its own (none was leaked). ``n`` tasks
that sleep for an hour run with ``timeout=0.1`` and no retries on the memory backend, so
each attempt ends with its child's process group killed and a new child started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import isolation_tasks as iso  # the test suite's module-level task functions

from bgcoor_core import TaskManager


async def main(n: int, size: int) -> None:
    logging.getLogger("bgcoor").setLevel(logging.CRITICAL)  # one dead letter per task
    manager = TaskManager(broker_url="memory://", storage_url="memory://", process_pool_size=size)
    sleeper = manager.task(name="iso.sleeper", isolation="process", timeout=0.1, max_retries=0)(
        iso.sleeper
    )
    barrier = manager.task(name="iso.barrier", isolation="process", timeout=30)(iso.barrier)
    with tempfile.TemporaryDirectory(prefix="bgcoor-timeouts-") as tmp:
        started = time.monotonic()
        async with manager.worker(size) as pool:
            handles = await sleeper.enqueue_many([(f"{tmp}/sleep.log",)] * n)
            records = [await manager.storage.wait(h.id, timeout=3600) for h in handles]
            took = time.monotonic() - started
            meeting = f"{tmp}/barrier.log"
            together = [await barrier.enqueue(meeting, size) for _ in range(size)]
            pids = {await h.result(timeout=60) for h in together}
            children = pool._threads.children
            assert children is not None
            spawned = children.started
        await manager.close()
    timed_out = sum(1 for r in records if r.error and "exceeded its timeout" in r.error)
    assert timed_out == n, f"{timed_out} of {n} recorded as timeouts"
    assert len(pids) == size, f"only {len(pids)} of {size} children ran at once afterwards"
    print(
        f"{n} hard timeouts on {size} children in {took:.1f}s ({took / n * 1000:.0f} ms "
        f"each); {spawned} children started; afterwards {size} tasks ran at once in "
        f"{len(pids)} children"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--children", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.children))
