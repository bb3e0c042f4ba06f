"""Real worker processes against one Redis: many workers sharing a queue, and a Redis
server that crashes and comes back while they work."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError
from redis_servers import RedisServer
from redis_tasks import record_task

from bgcoor_core import TaskManager, TaskStatus

pytestmark = [pytest.mark.server, pytest.mark.slow]

HERE = Path(__file__).parent


def app_env(url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGCOOR_")}
    env.update(
        BGCOOR_BROKER_URL=url,
        BGCOOR_STORAGE_URL=url,
        BGCOOR_CONCURRENCY="20",
        BGCOOR_LEASE_SECONDS="5",
        BGCOOR_SHUTDOWN_GRACE="5",
        LEDGER=str(tmp_path / "ledger.txt"),
        PYTHONPATH=str(HERE),
    )
    env.update(settings)
    (tmp_path / "ledger.txt").touch()
    return env


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, str(HERE / "redis_app.py")], env=env, stderr=log)
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def ledger(env: dict[str, str]) -> list[tuple[int, int]]:
    lines = Path(env["LEDGER"]).read_text().splitlines()
    return [(int(i), int(pid)) for i, pid, *_ in map(str.split, lines)]


async def wait_for(manager: TaskManager, status: TaskStatus, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (await manager.storage.counts())[status] < count:
        assert time.monotonic() < deadline, await manager.storage.counts()  # across processes
        await asyncio.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout=20) for proc in procs]


async def test_three_workers_run_each_of_3000_tasks_once(
    redis_url: str, tmp_path: Path, workers: Callable[[dict[str, str]], subprocess.Popen[bytes]]
) -> None:
    n = 3000
    env = app_env(redis_url, tmp_path)
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    await record_task(manager).enqueue_many([(i,) for i in range(n)])
    procs = [workers(env) for _ in range(3)]
    await wait_for(manager, TaskStatus.SUCCEEDED, n, limit=45)
    assert stop(procs) == [0, 0, 0]
    runs = Counter(i for i, _ in ledger(env))
    assert set(runs) == set(range(n)), "a task was lost"
    assert max(runs.values()) == 1, [i for i, c in runs.items() if c > 1]
    assert len({pid for _, pid in ledger(env)}) == 3, "a worker did nothing"
    stats = await manager.broker.stats("default")
    assert (stats.ready, stats.reserved) == (0, 0)
    await manager.close()


async def test_workers_and_producers_ride_out_a_redis_restart(
    private_server: Callable[..., RedisServer],
    tmp_path: Path,
    workers: Callable[[dict[str, str]], subprocess.Popen[bytes]],
) -> None:
    server = private_server(persistent=True)
    url = f"{server.url}?prefix=restart"
    env = app_env(url, tmp_path, BGCOOR_LEASE_SECONDS="2", BGCOOR_CONCURRENCY="8")
    manager = TaskManager(broker_url=url, storage_url=url)
    record = record_task(manager)
    procs = [workers(env) for _ in range(2)]
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
    assert [proc.poll() for proc in procs] == [None, None], "a worker died"
    assert stop(procs) == [0, 0]
    logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
    noticed = ("reserve failed", "settling failed", "lease extension failed")
    assert any(sign in log for log in logs for sign in noticed), "no worker saw the outage"
    runs = Counter(i for i, _ in ledger(env))
    assert set(runs) == set(range(400)), "a task was lost"
    assert -1 not in runs
    for handle in [*first, *second]:
        assert (await manager.get(handle.id)).status is TaskStatus.SUCCEEDED
    await manager.close()
