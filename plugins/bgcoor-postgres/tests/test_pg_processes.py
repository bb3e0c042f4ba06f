"""Real worker processes sharing one schema: thousands of tasks, each run exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bgcoor_core import QueueStats, Settings, TaskManager, TaskStatus
from bgcoor_core.testing import WorkerFleet, ledger_task

pytestmark = [pytest.mark.server, pytest.mark.slow]


async def wait_for(manager: TaskManager, status: TaskStatus, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (await manager.storage.counts())[status] < count:
        assert time.monotonic() < deadline, await manager.storage.counts()
        await asyncio.sleep(0.1)


async def test_worker_processes_run_each_task_exactly_once(
    tmp_path: Path, pg_url: Callable[..., str]
) -> None:
    n = 3000
    url = pg_url()  # the producer's backend drops the schema when it closes; workers' do not
    workers_url = url.replace("temporary=true", "temporary=false")
    manager = TaskManager(Settings(broker_url=url, storage_url=url))
    settings = {"concurrency": 16, "lease_seconds": 10, "shutdown_grace": 5}
    with WorkerFleet(workers_url, tmp_path, **settings) as fleet:
        try:
            await ledger_task(manager).enqueue_many([(i,) for i in range(n)])
            fleet.start(3)
            await wait_for(manager, TaskStatus.SUCCEEDED, n, limit=45)
            assert fleet.stop() == [0, 0, 0], fleet.logs()
            runs = Counter(run.i for run in fleet.runs())
            assert set(runs) == set(range(n)), "tasks lost"
            assert max(runs.values()) == 1, [i for i, c in runs.items() if c > 1]
            assert len({run.pid for run in fleet.runs()}) == 3, "not every worker did work"
            assert await manager.broker.stats("default") == QueueStats()
        finally:
            await manager.close()
