"""Real worker processes against one Redis: many workers sharing a queue, and a Redis
server that crashes and comes back while they work."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.exceptions import RedisError
from redis_servers import RedisServer

from bgcoor_core import TaskManager, TaskStatus
from bgcoor_core.testing import WorkerFleet, ledger_task

pytestmark = [pytest.mark.server, pytest.mark.slow]

#: Worker settings (``BGCOOR_*``) of these tests.
SETTINGS = {"concurrency": 20, "lease_seconds": 5, "shutdown_grace": 5}


async def wait_for(manager: TaskManager, status: TaskStatus, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (await manager.storage.counts())[status] < count:
        assert time.monotonic() < deadline, await manager.storage.counts()  # across processes
        await asyncio.sleep(0.05)


async def test_three_workers_run_each_of_3000_tasks_once(redis_url: str, tmp_path: Path) -> None:
    n = 3000
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    try:
        # 10 ms each: one worker alone would need 1.5 s, time for the other two to start
        await ledger_task(manager).enqueue_many([(i, 0.01) for i in range(n)])
        with WorkerFleet(redis_url, tmp_path, **SETTINGS) as fleet:
            fleet.start(3)
            await wait_for(manager, TaskStatus.SUCCEEDED, n, limit=45)
            assert fleet.stop() == [0, 0, 0], fleet.logs()
        runs = Counter(run.i for run in fleet.runs())
        assert set(runs) == set(range(n)), "a task was lost"
        assert max(runs.values()) == 1, [i for i, c in runs.items() if c > 1]
        assert len({run.pid for run in fleet.runs()}) == 3, "a worker did nothing"
        stats = await manager.broker.stats("default")
        assert (stats.ready, stats.reserved) == (0, 0)
    finally:  # a failed check must not leave its connections to fail a later test
        await manager.close()


async def test_workers_and_producers_ride_out_a_redis_restart(
    private_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = private_server(persistent=True)
    url = f"{server.url}?prefix=restart"
    manager = TaskManager(broker_url=url, storage_url=url)
    record = ledger_task(manager)
    settings = {**SETTINGS, "lease_seconds": 2, "concurrency": 8}
    with WorkerFleet(url, tmp_path, **settings) as fleet:
        fleet.start(2)
        first = await record.enqueue_many([(i, 0.05) for i in range(300)])
        await wait_for(manager, TaskStatus.SUCCEEDED, 100, limit=30)
        done = {t.id for t in await manager.storage.list(status=TaskStatus.SUCCEEDED, limit=1000)}
        server.stop(kill=True)  # a crash, in the middle of the work
        assert len(done) < 300, "all work was done before the crash: nothing was tested"
        with pytest.raises(RedisError):  # an enqueue during the outage raises, never drops
            await record.enqueue(-1)
        await asyncio.sleep(1.0)  # the outage lasts: workers hit it and back off meanwhile
        server.start()
        after = {t.id for t in await manager.storage.list(status=TaskStatus.SUCCEEDED, limit=1000)}
        assert done <= after, "outcomes stored before the crash were lost"
        second = await record.enqueue_many([(i, 0.01) for i in range(300, 400)])
        await wait_for(manager, TaskStatus.SUCCEEDED, 400, limit=45)
        assert [p.poll() for p in fleet.processes] == [None, None], "a worker died"
        assert fleet.stop() == [0, 0], fleet.logs()
    noticed = ("reserve failed", "settling failed", "lease extension failed")
    assert any(sign in fleet.logs() for sign in noticed), "no worker saw the outage"
    runs = Counter(run.i for run in fleet.runs())
    assert set(runs) == set(range(400)), "a task was lost"
    assert -1 not in runs
    for handle in [*first, *second]:
        assert (await manager.get(handle.id)).status is TaskStatus.SUCCEEDED
    await manager.close()
