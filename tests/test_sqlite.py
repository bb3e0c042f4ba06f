"""SQLite backend specifics: URLs, schema versions, and real processes sharing one file.

The broker and storage contracts themselves are checked by the shared conformance suite.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgcoor_core import ConfigurationError, TaskManager, TaskStatus
from bgcoor_core.backends.sqlite import SQLiteBackend, parse_sqlite_url
from bgcoor_core.backends.sqlite._schema import SCHEMA_VERSION, SchemaTooNewError
from bgcoor_core.testing import WorkerFleet, ledger_task, make_task, make_test_codec

HERE = Path(__file__).parent


def test_url_forms(tmp_path: Path) -> None:
    assert parse_sqlite_url("sqlite:///jobs.db")[0] == "jobs.db"
    path, options = parse_sqlite_url(f"sqlite:///{tmp_path}/a.db?poll_interval=0.5")
    assert path == f"{tmp_path}/a.db"
    assert options.poll_interval == 0.5


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://host/x.db", "invalid SQLite URL"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?colour=blue", "colour"),
        ("sqlite:///x.db?poll_interval=-1", "poll_interval"),
        ("sqlite:////no/such/dir/x.db", "does not exist"),
    ],
)
def test_bad_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        parse_sqlite_url(url)


async def test_schema_is_created_versioned_and_reopened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    for _ in range(2):  # the second open must find the schema current and change nothing
        manager = TaskManager(broker_url=url, storage_url=url)
        assert await manager.storage.counts() == dict.fromkeys(TaskStatus, 0)
        await manager.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    url = f"sqlite:///{tmp_path}/new.db"
    manager = TaskManager(broker_url=url, storage_url=url)
    with pytest.raises(SchemaTooNewError, match="newer"):
        await manager.storage.counts()
    await manager.close()


async def test_a_version_1_file_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    from bgcoor_core.backends.sqlite._schema import MIGRATIONS

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
    backend = SQLiteBackend(str(path), make_test_codec())
    task = make_task()
    await backend.enqueue_atomically([task], [backend.to_message(task)])
    [reservation] = await backend.reserve(["default"], lease=30)
    assert reservation.started  # uses the column version 2 added
    await backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_cancelled_reserve_hands_back_and_restores_the_record(tmp_path: Path) -> None:
    from bgcoor_core.backends.sqlite._backend import _release_rows

    backend = SQLiteBackend(f"{tmp_path}/r.db", make_test_codec())
    task = make_task()
    await backend.enqueue_atomically([task], [backend.to_message(task)])
    [r] = await backend.reserve(["default"], lease=30)
    assert r.started
    # what the callback of a reserve cancelled in flight runs with the rows it took
    await backend.db.run(_release_rows, [(r.task.id, "default", b"", 1, 0, r.token, True)])
    assert await backend.get(task.id) == task
    [again] = await backend.reserve(["default"], lease=30)
    assert (again.deliveries, again.started) == (1, True)
    await backend.close()


async def test_one_object_serves_as_broker_and_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/one.db"
    manager = TaskManager(broker_url=url, storage_url=url)
    assert isinstance(manager.broker, SQLiteBackend)
    assert manager.broker is manager.storage
    await manager.close()


# -- real processes ----------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[WorkerFleet]:
    url = f"sqlite:///{tmp_path}/shared.db"
    with WorkerFleet(url, tmp_path, concurrency=4, lease_seconds=2, shutdown_grace=5) as fleet:
        yield fleet


def producer(fleet: WorkerFleet) -> TaskManager:
    url = fleet.env["BGCOOR_BROKER_URL"]
    return TaskManager(broker_url=url, storage_url=url)


async def wait_for(manager: TaskManager, status: TaskStatus, count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (await manager.storage.counts())[status] < count:
        assert time.monotonic() < deadline, await manager.storage.counts()
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_processes_share_one_file_each_task_runs_once(fleet: WorkerFleet) -> None:
    n = 1500
    manager = producer(fleet)
    await ledger_task(manager).enqueue_many([(i,) for i in range(n)])
    fleet.start(3)
    await wait_for(manager, TaskStatus.SUCCEEDED, n, limit=90)
    assert fleet.stop() == [0, 0, 0], fleet.logs()
    runs = Counter(run.i for run in fleet.runs())
    assert set(runs) == set(range(n))
    assert max(runs.values()) == 1, [i for i, c in runs.items() if c > 1]
    assert len({run.pid for run in fleet.runs()}) == 3  # all three did work
    await manager.close()


@pytest.mark.slow
async def test_sigkilled_worker_tasks_run_after_restart(fleet: WorkerFleet) -> None:
    n = 12
    manager = producer(fleet)
    handles = await ledger_task(manager).enqueue_many([(i, 0.4) for i in range(n)])
    [first] = fleet.start()
    await wait_for(manager, TaskStatus.RUNNING, 1, limit=20)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    interrupted = await manager.storage.list(status=TaskStatus.RUNNING)
    assert interrupted, "the killed worker left running tasks behind"
    [second] = fleet.start()  # a fresh worker reclaims them once their lease expires
    await wait_for(manager, TaskStatus.SUCCEEDED, n, limit=60)
    runs = fleet.runs()
    assert {run.i for run in runs} == set(range(n))
    for task in interrupted:
        record = await manager.get(task.id)
        assert record.status is TaskStatus.SUCCEEDED
        # the killed attempt never finished; the task was run again by the new worker
        assert [r.pid for r in runs if r.i == task.payload["args"][0]] == [second.pid]
    assert (await manager.storage.counts())[TaskStatus.RUNNING] == 0
    assert [await h.result(timeout=1) for h in handles] == list(range(n))
    await manager.close()
