"""A complete small plugin on the execution hooks: it stamps each task with the time it
was enqueued (a header) and, on the worker, times the wait and the run around each attempt.

Run it: ``python examples/timing_plugin.py``. Published as a package, the class would be a
module listed under the ``bgcoor`` entry-point group instead of ``plugins=[...]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from bgcoor_core import CurrentTask, Task, TaskManager, current_task, hookimpl

HEADER = "timing-enqueued-at"


class TimingPlugin:
    """Adds a header at enqueue and reads it at execution."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @hookimpl
    def bgcoor_before_enqueue(self, task: Task) -> None:
        task.headers[HEADER] = f"{time.time():.6f}"

    @hookimpl
    def bgcoor_wrap_execution(
        self, current: CurrentTask
    ) -> contextlib.AbstractContextManager[None]:
        return self._timed(current)

    @contextlib.contextmanager
    def _timed(self, current: CurrentTask) -> Iterator[None]:
        waited = time.time() - float(current.headers.get(HEADER, time.time()))
        started = time.perf_counter()
        try:
            yield
        finally:
            ran = time.perf_counter() - started
            outcome = "failed" if current.error else "succeeded"
            self.lines.append(
                f"{current.name} attempt {current.attempt} {outcome}: "
                f"waited {waited * 1000:.1f} ms, ran {ran * 1000:.1f} ms"
            )


timing = TimingPlugin()
manager = TaskManager(plugins=[timing], broker_url="memory://", storage_url="memory://")


@manager.task(name="demo.nap")
async def nap(ms: int) -> str:
    await asyncio.sleep(ms / 1000)
    return f"napped with header {HEADER} = {current_task().headers[HEADER][:10]}..."


async def main() -> None:
    async with manager.worker(concurrency=2):
        handles = [await nap.enqueue(ms) for ms in (20, 50)]
        for handle in handles:
            print(await handle.result(timeout=5))
    for line in timing.lines:
        print(line)
    await manager.close()


if __name__ == "__main__":
    asyncio.run(main())
