"""PostgreSQL specifics beyond the shared conformance suite: migrations, wake-ups,
cancellation, cleanup and the indexes behind reserve, list and counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import (
    SCHEMA_VERSION,
    PostgresBackend,
    SchemaNotMigratedError,
    SchemaTooNewError,
    parse_postgres_url,
)
from bgcoor_postgres._testing import SERVER_URL

from bgcoor_core import Settings, TaskManager, TaskStatus
from bgcoor_core.cli._migrate import apply_migrations
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server
URL = Callable[..., str]


def open_backend(url: str) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), make_test_codec())


def schema_of(url: str) -> str:
    return parse_postgres_url(url).schema


async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(SERVER_URL)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def schema_exists(name: str) -> bool:
    return bool(await fetch("SELECT 1 FROM pg_namespace WHERE nspname = $1", name))


# -- schema and migrations ---------------------------------------------------------------


async def test_concurrent_migrations_apply_each_step_once(pg_url: URL) -> None:
    url = pg_url()
    backends = [open_backend(url) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(b.migrate() for b in backends))
        assert sorted(len(lines) for lines in applied) == [0] * 5 + [SCHEMA_VERSION]
        assert await backends[0].migrate() == []  # idempotent
        rows = await fetch(f'SELECT version FROM "{schema_of(url)}".migrations ORDER BY version')
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for backend in backends:
            await backend.close()
    assert not await schema_exists(schema_of(url)), "temporary schema not dropped"


async def test_workers_starting_together_migrate_once(pg_url: URL) -> None:
    url = pg_url()
    backends = [open_backend(url) for _ in range(4)]
    try:
        task = make_task()
        await asyncio.gather(*(b.save(task) for b in backends))  # each auto-migrates
        assert await backends[1].get(task.id) == task
    finally:
        for backend in backends:
            await backend.close()


async def test_bgcoor_migrate_applies_then_reports_current(pg_url: URL) -> None:
    url = pg_url(auto_migrate="false")
    manager = TaskManager(Settings(broker_url=url, storage_url=url))
    try:
        with pytest.raises(SchemaNotMigratedError, match="bgcoor migrate"):
            await manager.storage.counts()
        lines = await apply_migrations(manager)
        assert len(lines) == SCHEMA_VERSION
        assert schema_of(url) in lines[0]
        assert await apply_migrations(manager) == []
        assert await manager.storage.counts() == dict.fromkeys(TaskStatus, 0)
    finally:
        await manager.close()


async def test_newer_schema_is_refused(pg_url: URL) -> None:
    url = pg_url()
    first = open_backend(url)
    await first.migrate()
    schema = schema_of(url)
    await fetch(f"INSERT INTO \"{schema}\".migrations (version, name) VALUES (99, 'future')")
    late = open_backend(url.replace("temporary=true", "temporary=false"))
    try:
        with pytest.raises(SchemaTooNewError, match="upgrade"):
            await late.get("x")
    finally:
        await late.close()
        await first.close()


async def test_one_object_serves_as_broker_and_storage(manager: TaskManager) -> None:
    assert isinstance(manager.broker, PostgresBackend)
    assert manager.broker is manager.storage
    other = open_backend(manager.settings.broker_url.replace("temporary=true", "temporary=false"))
    assert manager.broker.shares_store_with(other)  # same database and schema
    assert not manager.broker.shares_store_with(open_backend(SERVER_URL + "?schema=elsewhere"))


# -- waking idle consumers ---------------------------------------------------------------


async def test_idle_consumer_wakes_on_notify_from_another_process(pg_url: URL) -> None:
    url = pg_url(poll_interval=30)
    consumer, producer = open_backend(url), open_backend(url)
    try:
        await consumer.reserve(["default"], lease=30, timeout=0)
        await asyncio.sleep(0.2)  # the LISTEN connection is up
        waiter = asyncio.create_task(consumer.reserve(["default"], lease=30, timeout=20))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        task = make_task()
        pushed = time.monotonic()
        await producer.push(task)  # another object: only NOTIFY can wake the consumer
        got = await waiter
        latency = time.monotonic() - pushed
        assert [r.task.id for r in got] == [task.id]
        assert latency < 0.5, f"woke after {latency:.3f}s: not by NOTIFY"
    finally:
        await consumer.close()
        await producer.close()


async def test_idle_consumer_wakes_for_the_next_eta(backend: PostgresBackend) -> None:
    fast = open_backend(f"{backend.target.dsn}?schema={backend.target.schema}&poll_interval=30")
    try:
        task = make_task(eta=None)
        await fast.reserve(["default"], lease=30, timeout=0)
        await asyncio.sleep(0.2)
        delayed = task.model_copy(update={"eta": _in(0.5)})
        await backend.push(delayed)  # notified now, due in 0.5 s
        start = time.monotonic()
        got = await fast.reserve(["default"], lease=30, timeout=10)
        assert [r.task.id for r in got] == [task.id]
        assert 0.4 <= time.monotonic() - start < 2.0
    finally:
        await fast.close()


def _in(seconds: float) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)


# -- cancellation and cleanup ------------------------------------------------------------


async def test_reserve_cancelled_mid_statement_hands_the_rows_back(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = [make_task() for _ in range(3)]
    await backend.push_many(tasks)
    db = backend._db
    real_run = db.run
    in_flight = asyncio.Event()

    async def slow_run(operation: Any) -> Any:
        result = await real_run(operation)
        in_flight.set()
        await asyncio.sleep(0.3)  # the rows are leased; our caller is cancelled now
        return result

    monkeypatch.setattr(db, "run", slow_run)
    waiter = asyncio.create_task(backend.reserve(["default"], lease=30, limit=3))
    await in_flight.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    monkeypatch.setattr(db, "run", real_run)
    for _ in range(100):
        if (await backend.stats("default")).ready == 3:
            break
        await asyncio.sleep(0.05)
    assert (await backend.stats("default")).reserved == 0
    again = await backend.reserve(["default"], lease=30, limit=3)
    assert [r.task.id for r in again] == [t.id for t in tasks]
    assert {(r.deliveries, r.lost) for r in again} == {(1, 0)}


async def test_worker_pools_clean_up_expired_records(pg_url: URL) -> None:
    url = pg_url()
    manager = TaskManager(Settings(broker_url=url, storage_url=url, cleanup_seconds=0.1))
    try:
        backend = manager.broker
        assert isinstance(backend, PostgresBackend)
        await backend.save(make_task(status=TaskStatus.SUCCEEDED), ttl=0.05)
        kept = make_task()
        await backend.save(kept)
        table = f'"{backend.target.schema}".tasks'
        await asyncio.sleep(0.1)
        async with manager.worker(concurrency=1):
            for _ in range(50):
                if len(await fetch(f"SELECT id FROM {table}")) == 1:
                    break
                await asyncio.sleep(0.05)
        assert [r[0] for r in await fetch(f"SELECT id FROM {table}")] == [kept.id]
    finally:
        await manager.close()


# -- indexes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "index"),
    [
        ("list_status", "tasks_status"),
        ("list_name", "tasks_name"),
        ("counts", "tasks_status"),
        ("reserve", "messages_take"),
        ("expired", "tasks_expires"),
    ],
)
async def test_statements_are_served_by_indexes(
    backend: PostgresBackend, statement: str, index: str
) -> None:
    tasks = [make_task(payload=i) for i in range(2000)]
    await backend.save_many(tasks)
    await backend.push_many(tasks)
    s = f'"{backend.target.schema}"'
    sql = {
        "list_status": f"SELECT id FROM {s}.tasks t WHERE status = 'running' "
        "AND id > '0' ORDER BY id LIMIT 10",
        "list_name": f"SELECT id FROM {s}.tasks t WHERE name = 'x' ORDER BY id LIMIT 10",
        "counts": backend.sql.counts,
        "reserve": backend.sql.reserve.replace("$1", "'{default}'")
        .replace("$2", "10")
        .replace("$3", "30"),
        "expired": f"SELECT id FROM {s}.tasks WHERE expires_at <= clock_timestamp()",
    }[statement]
    conn = await asyncpg.connect(SERVER_URL)
    try:
        await conn.execute(f"ANALYZE {s}.tasks; ANALYZE {s}.messages")
        await conn.execute("SET enable_seqscan = off")  # small tables: show what serves them
        await conn.execute("BEGIN")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}"))
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()
    assert index in plan, plan


# -- reserve marks records running -------------------------------------------------------


async def test_reserve_marks_the_records_running(backend: PostgresBackend) -> None:
    task = make_task(payload={"x": 0.5}, attempts=2)
    await backend.enqueue_atomically([task], [backend.to_message(task)])
    [reservation] = await backend.reserve(["default"], lease=30)
    assert reservation.started
    stored = await backend.get(task.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.lease_token) == (
        TaskStatus.RUNNING,
        3,
        reservation.token,
    )
    assert stored.started_at is not None
    assert stored.payload == {"x": 0.5}


async def test_a_cancelled_reserve_hands_back_and_restores_the_record(
    backend: PostgresBackend,
) -> None:
    task = make_task(payload={"big": 2**70, "x": 1e20})
    await backend.enqueue_atomically([task], [backend.to_message(task)])
    [r] = await backend.reserve(["default"], lease=30)
    assert r.started
    # what the callback of a reserve cancelled in flight runs with the rows it took
    await backend._db.run(lambda c: c.execute(backend.sql.release, [r.task.id], [r.token]))
    assert await backend.get(task.id) == task  # the exact record, numbers as they were
    [again] = await backend.reserve(["default"], lease=30)
    assert (again.deliveries, again.started) == (1, True)


async def test_a_cancelled_task_is_acked_not_run(manager: TaskManager) -> None:
    ran: list[int] = []

    @manager.task(name="job")
    async def job(i: int) -> None:
        ran.append(i)

    handle = await job.enqueue(1)
    assert await handle.cancel()
    assert await manager.drain() == 1
    assert ran == []
    assert (await handle.info()).status is TaskStatus.CANCELLED
    assert (await manager.broker.stats("default")).reserved == 0


async def test_a_reason_holding_a_nul_is_stored_escaped(backend: PostgresBackend) -> None:
    """PostgreSQL text cannot hold NUL; a third-party reason must not make the
    dead-lettering fail (and the message come back forever)."""
    task = make_task()
    await backend.push(task)
    [reservation] = await backend.reserve(["default"], lease=30)
    await backend.dead_letter(reservation, "bad\x00reason")
    [letter] = await backend.dead_letters("default")
    assert letter.reason == "bad\\x00reason"
