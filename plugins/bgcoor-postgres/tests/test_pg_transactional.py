"""Transactional enqueue: a task exists only if the caller's transaction commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import PostgresBackend, backend_of, enqueue_in

from bgcoor_core import (
    ConfigurationError,
    DuplicateTaskError,
    QueueStats,
    TaskManager,
    TaskStatus,
)

pytestmark = pytest.mark.server


@pytest.fixture
async def app_conn(manager: TaskManager) -> AsyncIterator[asyncpg.Connection[Any]]:
    """The application's own connection, with a table of its own in the task schema."""
    backend = backend_of(manager)
    await backend.migrate()
    conn = await asyncpg.connect(backend.target.dsn)
    await conn.execute(f'CREATE TABLE "{backend.target.schema}".orders (id int PRIMARY KEY)')
    yield conn
    await conn.close()


def orders_table(manager: TaskManager) -> str:
    return f'"{backend_of(manager).target.schema}".orders'


async def test_commit_enqueues_and_the_task_runs(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    @manager.task(name="receipt")
    async def receipt(order: int) -> str:
        return f"receipt for {order}"

    async with manager.worker(concurrency=2):
        async with app_conn.transaction():
            await app_conn.execute(f"INSERT INTO {orders_table(manager)} VALUES (7)")
            handle = await enqueue_in(app_conn, receipt, 7)
            # not visible outside the transaction yet
            assert await manager.storage.get(handle.id) is None
        assert await handle.result(timeout=10) == "receipt for 7"
    assert (await handle.info()).status is TaskStatus.SUCCEEDED


async def test_rollback_leaves_no_task_and_no_record(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    @manager.task(name="receipt")
    async def receipt(order: int) -> None: ...

    backend = backend_of(manager)
    transaction = app_conn.transaction()
    await transaction.start()
    await app_conn.execute(f"INSERT INTO {orders_table(manager)} VALUES (8)")
    handle = await enqueue_in(app_conn, receipt, 8)
    assert await app_conn.fetchval(f'SELECT count(*) FROM "{backend.target.schema}".tasks') == 1
    await transaction.rollback()
    assert await backend.get(handle.id) is None
    assert await backend.stats("default") == QueueStats()
    assert await app_conn.fetchval(f"SELECT count(*) FROM {orders_table(manager)}") == 0
    assert await backend.reserve(["default"], lease=5, timeout=0.2) == []


async def test_batch_with_options_and_duplicate_ids(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    @manager.task(name="ping")
    async def ping(n: int) -> None: ...

    backend = backend_of(manager)
    tasks = [ping.build((n,), {}, queue="urgent", priority=n) for n in range(3)]
    async with app_conn.transaction():
        await backend.enqueue_in(app_conn, tasks)
    assert (await backend.stats("urgent")).ready == 3
    got = await backend.reserve(["urgent"], lease=5, limit=3)
    assert [r.task.payload["args"] for r in got] == [[2], [1], [0]]  # priority order
    with pytest.raises(DuplicateTaskError):
        async with app_conn.transaction():
            await backend.enqueue_in(app_conn, [tasks[0]])
    assert (await backend.stats("urgent")).reserved == 3


async def test_existing_record_refuses_the_enqueue(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    """An id whose record exists (here a finished task's) refuses the whole batch, naming
    the id and status, on our connection and inside the caller's transaction alike."""

    @manager.task(name="ping")
    async def ping(n: int) -> None: ...

    backend = backend_of(manager)
    done = ping.build((1,), {})
    done.status = TaskStatus.SUCCEEDED
    await backend.save(done)
    again = done.model_copy(update={"status": TaskStatus.PENDING})
    fresh = ping.build((2,), {})
    with pytest.raises(DuplicateTaskError, match=f"{done.id} already exists.*succeeded"):
        await backend.enqueue_atomically(
            [fresh, again], [backend.to_message(t) for t in (fresh, again)]
        )
    assert await backend.get(fresh.id) is None
    assert (await backend.stats("default")).ready == 0
    with pytest.raises(DuplicateTaskError, match=f"{done.id} already exists.*succeeded"):
        async with app_conn.transaction():
            await backend.enqueue_in(app_conn, [again])
    stored = await backend.get(done.id)
    assert stored is not None
    assert stored.status is TaskStatus.SUCCEEDED


async def test_needs_the_postgres_backend_as_broker_and_storage() -> None:
    manager = TaskManager(broker_url="memory://", storage_url="memory://")

    @manager.task(name="ping")
    async def ping() -> None: ...

    with pytest.raises(ConfigurationError, match="same PostgreSQL schema"):
        await enqueue_in(object(), ping)  # type: ignore[arg-type]
    assert not isinstance(manager.broker, PostgresBackend)
    await manager.close()
