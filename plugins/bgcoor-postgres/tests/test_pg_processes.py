"""Real worker processes sharing one schema: thousands of tasks, each run exactly once."""

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
from typing import Any

import pytest

from bgcoor_core import QueueStats, Settings, TaskFunction, TaskManager, TaskStatus

pytestmark = [pytest.mark.server, pytest.mark.slow]
HERE = Path(__file__).parent


def record_task(manager: TaskManager) -> TaskFunction[Any, int]:
    """The producer's declaration of the workers' ``record`` task."""

    def record(i: int, sleep: float = 0.0) -> int:
        raise AssertionError("runs in the worker processes only")

    return manager.task(name="record")(record)


@pytest.fixture
def app_env(tmp_path: Path, pg_url: Callable[..., str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGCOOR_")}
    url = pg_url()
    env.update(
        BGCOOR_BROKER_URL=url.replace("temporary=true", "temporary=false"),
        BGCOOR_STORAGE_URL=url.replace("temporary=true", "temporary=false"),
        BGCOOR_CONCURRENCY="16",
        BGCOOR_LEASE_SECONDS="10",
        BGCOOR_SHUTDOWN_GRACE="5",
        LEDGER=str(tmp_path / "ledger.txt"),
        PRODUCER_URL=url,  # the producer's backend drops the schema when it closes
    )
    (tmp_path / "ledger.txt").touch()
    return env


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_workers(env: dict[str, str], count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, str(HERE / "pg_app.py")], env=env) for _ in range(count)
    ]


def read_ledger(env: dict[str, str]) -> list[str]:
    return Path(env["LEDGER"]).read_text().splitlines()


async def wait_for(manager: TaskManager, status: TaskStatus, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (await manager.storage.counts())[status] < count:
        assert time.monotonic() < deadline, await manager.storage.counts()
        await asyncio.sleep(0.1)


async def test_worker_processes_run_each_task_exactly_once(
    app_env: dict[str, str], workers: list[subprocess.Popen[bytes]]
) -> None:
    n = 3000
    url = app_env["PRODUCER_URL"]
    manager = TaskManager(Settings(broker_url=url, storage_url=url))
    try:
        await record_task(manager).enqueue_many([(i,) for i in range(n)])
        workers += start_workers(app_env, 3)
        await wait_for(manager, TaskStatus.SUCCEEDED, n, limit=45)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=20) for proc in workers] == [0, 0, 0]
        lines = read_ledger(app_env)
        runs = Counter(int(line.split()[0]) for line in lines)
        assert set(runs) == set(range(n)), "tasks lost"
        assert max(runs.values()) == 1, [i for i, c in runs.items() if c > 1]
        assert len({line.split()[1] for line in lines}) == 3, "not every worker did work"
        assert await manager.broker.stats("default") == QueueStats()
    finally:
        await manager.close()
