"""Unique keys in PostgreSQL beyond the shared UniqueContract: statements per batch, 32
producers on separate backends racing for the same 500 keys, keys taken inside a
caller's transaction (commit and rollback), the sweep of keys nobody holds, the
migration that adds the table, and unique tasks run end to end by a worker."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import SCHEMA_VERSION, PostgresBackend, _schema, backend_of, parse_postgres_url
from bgcoor_postgres._testing import SERVER_URL, is_type_lookup, new_schema_name

from bgcoor_core import DuplicateTaskError, Task, TaskManager, TaskStatus
from bgcoor_core._unique import UNIQUE_HEADER, UNIQUE_UNTIL_HEADER
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server
URL = Callable[..., str]
NAME = "pg.unique"
#: The schema version that added the unique_keys table.
UNIQUES_VERSION = 6


def open_backend(url: str) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), make_test_codec())


def unique_task(key: str, window: float | None = None) -> Task:
    task = make_task(NAME)
    task.headers[UNIQUE_HEADER] = key
    if window is not None:
        task.headers[UNIQUE_UNTIL_HEADER] = repr(time.time() + window)
    return task


async def enqueue(backend: PostgresBackend, *tasks: Task) -> list[str | None]:
    store = backend.unique_store(backend)
    assert store is not None
    return await store.enqueue_unique(tasks, [backend.to_message(t) for t in tasks])


def table(backend: PostgresBackend, name: str) -> str:
    return f'"{backend.target.schema}".{name}'


async def count(conn: asyncpg.Connection[Any], backend: PostgresBackend, name: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table(backend, name)}"))


# -- round trips -----------------------------------------------------------------------


async def test_a_batch_costs_a_fixed_number_of_statements_whatever_its_size(
    backend: PostgresBackend,
) -> None:
    seen: list[str] = []
    backend._db.observer = lambda query: None if is_type_lookup(query) else seen.append(query)
    store = backend.unique_store(backend)
    assert store is not None
    names = {sql: name for name, sql in vars(store.sql).items()}

    def counted() -> Counter[str]:
        found = Counter(names.get(q, q.split()[0].upper()) for q in seen)
        seen.clear()
        return found

    await backend.migrate()
    keys = [f"k{n}" for n in range(300)]
    assert await enqueue(backend, *(unique_task(k) for k in keys)) == [None] * 300
    # new keys: no holder to read
    assert counted() == Counter({"BEGIN;": 1, "lock": 1, "enqueue": 1, "COMMIT;": 1})
    query = f"SELECT key, task_id FROM {table(backend, 'unique_keys')}"
    first = {r[0]: r[1] for r in await backend._db.run(lambda c: c.fetch(query))}
    seen.clear()
    again = [unique_task(k) for k in keys[:150]] + [unique_task(f"new{n}") for n in range(150)]
    holders = await enqueue(backend, *again, make_task(NAME))
    assert holders == [first[k] for k in keys[:150]] + [None] * 151
    wanted = {"BEGIN;": 1, "lock": 1, "holders": 1, "enqueue": 1, "COMMIT;": 1}
    assert counted() == Counter(wanted)
    assert await enqueue(backend, *(unique_task(k) for k in keys)) == [first[k] for k in keys]
    # every task deduplicated: nothing to write
    assert counted() == Counter({"BEGIN;": 1, "lock": 1, "holders": 1, "COMMIT;": 1})


async def test_a_batch_without_keys_through_enqueue_in_is_the_plain_statement(
    manager: TaskManager,
) -> None:
    backend = backend_of(manager)
    await backend.migrate()
    seen: list[str] = []
    conn = await asyncpg.connect(backend.target.dsn)
    conn.add_query_logger(lambda q: None if is_type_lookup(q.query) else seen.append(q.query))
    try:
        tasks = [make_task(NAME) for _ in range(5)]
        assert await backend.enqueue_in(conn, tasks) == [None] * 5
        await asyncio.sleep(0.05)  # (query loggers are called soon after, not at once)
        assert seen == [backend.sql.enqueue]
    finally:
        await conn.close()


# -- concurrent producers --------------------------------------------------------------


async def test_32_producers_on_separate_backends_take_each_of_500_keys_once(
    pg_url: URL, raw: asyncpg.Connection[Any]
) -> None:
    url = pg_url(pool_size=2)
    first = open_backend(url)
    await first.migrate()
    backends = [first] + [open_backend(url.replace("&temporary=true", "")) for _ in range(31)]
    keys = [f"order-{n}" for n in range(500)]

    async def producer(seed: int) -> list[tuple[str, str | None]]:
        order = random.Random(seed).sample(keys, len(keys))  # every producer its own order
        chunk = (500, 100, 25, 1)[seed % 4]
        results: list[tuple[str, str | None]] = []
        for start in range(0, len(order), chunk):
            tasks = [unique_task(k) for k in order[start : start + chunk]]
            holders = await enqueue(backends[seed], *tasks)
            results += [(t.id, h) for t, h in zip(tasks, holders, strict=True)]
        return results

    try:
        results = await asyncio.gather(*(producer(seed) for seed in range(32)))
        enqueued = {task_id for r in results for task_id, holder in r if holder is None}
        returned = {holder for r in results for _, holder in r if holder is not None}
        assert len(enqueued) == 500
        assert returned <= enqueued  # a deduplicated task names a task that exists
        assert await count(raw, first, "tasks") == 500
        assert await count(raw, first, "messages") == 500
        rows = await raw.fetch(f"SELECT key, task_id FROM {table(first, 'unique_keys')}")
        assert sorted(r[0] for r in rows) == sorted(keys)
        assert {r[1] for r in rows} == enqueued  # each key names its one task
    finally:
        for backend in reversed(backends):
            await backend.close()


# -- the caller's transaction ------------------------------------------------------------


@pytest.fixture
async def app_conn(manager: TaskManager) -> AsyncIterator[asyncpg.Connection[Any]]:
    backend = backend_of(manager)
    await backend.migrate()
    conn = await asyncpg.connect(backend.target.dsn)
    yield conn
    await conn.close()


async def _racing_enqueue_in(
    manager: TaskManager, conn: asyncpg.Connection[Any], *, commit: bool
) -> None:
    """A key taken in an open transaction: another producer of it waits for the end."""

    @manager.task(name="invoice")
    async def invoice(order: int) -> None: ...

    backend = backend_of(manager)
    key = f"invoice-{uuid.uuid4().hex}"
    transaction = conn.transaction()
    await transaction.start()
    inside = invoice.build((1,), {}, unique_key=key)
    assert await backend.enqueue_in(conn, [inside]) == [None]
    other = asyncio.ensure_future(invoice.options(unique_key=key).enqueue(2))
    await asyncio.sleep(0.3)
    assert not other.done()  # it waits on the key's lock, it did not check and insert
    if commit:
        await transaction.commit()
    else:
        await transaction.rollback()
    handle = await asyncio.wait_for(other, 10)
    if commit:
        assert handle.deduplicated
        assert handle.id == inside.id
        assert (await handle.info()).status is TaskStatus.PENDING
    else:
        assert not handle.deduplicated
        assert handle.id != inside.id
        assert await backend.get(inside.id) is None
        (reservation,) = await backend.reserve(["default"], lease=5, limit=10, timeout=0)
        assert reservation.task.id == handle.id
    again = await invoice.options(unique_key=key).enqueue(3)
    assert again.deduplicated
    assert again.id == (inside.id if commit else handle.id)


async def test_enqueue_in_takes_the_key_in_the_callers_transaction_on_commit(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    await _racing_enqueue_in(manager, app_conn, commit=True)


async def test_a_rolled_back_enqueue_in_leaves_the_key_free(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    await _racing_enqueue_in(manager, app_conn, commit=False)


async def test_enqueue_in_outside_a_transaction_and_its_holders(
    manager: TaskManager, app_conn: asyncpg.Connection[Any]
) -> None:
    @manager.task(name="invoice")
    async def invoice(order: int) -> None: ...

    backend = backend_of(manager)
    key = f"invoice-{uuid.uuid4().hex}"
    one, two, plain = (
        invoice.build((1,), {}, unique_key=key),
        invoice.build((2,), {}, unique_key=key),
        invoice.build((3,), {}),
    )
    assert await backend.enqueue_in(app_conn, [one, two, plain]) == [None, one.id, None]
    assert not app_conn.is_in_transaction()
    assert await backend.get(two.id) is None
    assert {r.task.id for r in await backend.reserve(["default"], lease=5, limit=10)} == {
        one.id,
        plain.id,
    }
    with pytest.raises(DuplicateTaskError):  # the same task again holds its own key
        await backend.enqueue_in(app_conn, [one])


# -- the sweep -------------------------------------------------------------------------


async def test_the_sweep_deletes_keys_nobody_holds_and_leaves_the_others(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    await backend.migrate()
    gone_task, final_task, pending_task = (unique_task(f"k-{n}") for n in range(3))
    windowed_task = unique_task("k-window", window=3600)
    await enqueue(backend, gone_task, final_task, pending_task, windowed_task)
    tasks, keys = table(backend, "tasks"), table(backend, "unique_keys")
    # gone: its record expired; final: final, its TTL not over; windowed: its record
    # expired, its window open; pending: as enqueued
    await raw.execute(
        f"UPDATE {tasks} SET status = 'succeeded', expires_at = clock_timestamp() - "
        "interval '1 second' WHERE id = ANY($1::text[])",
        [gone_task.id, windowed_task.id],
    )
    await raw.execute(
        f"UPDATE {tasks} SET status = 'succeeded', expires_at = clock_timestamp() + "
        "interval '1 hour' WHERE id = $1",
        final_task.id,
    )
    await raw.execute(f"INSERT INTO {keys} (key) VALUES ('locked-but-never-taken')")
    await backend.delete_expired()
    left = {r[0] for r in await raw.fetch(f"SELECT key FROM {keys}")}
    assert left == {"k-1", "k-2", "k-window"}
    assert await enqueue(backend, unique_task("k-0")) == [None]  # gone: taken anew
    assert await enqueue(backend, unique_task("k-window")) == [windowed_task.id]


async def test_the_sweep_skips_a_key_an_open_transaction_is_taking(
    manager: TaskManager, app_conn: asyncpg.Connection[Any], raw: asyncpg.Connection[Any]
) -> None:
    @manager.task(name="invoice")
    async def invoice(order: int) -> None: ...

    backend = backend_of(manager)
    old = invoice.build((1,), {}, unique_key="k")
    await backend.enqueue_in(app_conn, [old])
    await raw.execute(  # its holder's record expired: the key is free, and sweepable
        f"UPDATE {table(backend, 'tasks')} SET status = 'succeeded', "
        "expires_at = clock_timestamp() - interval '1 second'"
    )
    async with app_conn.transaction():
        new = invoice.build((2,), {}, unique_key="k")
        assert await backend.enqueue_in(app_conn, [new]) == [None]
        await backend.delete_expired()  # does not wait for the key, nor delete it
    await backend.delete_expired()  # committed: its holder is pending
    rows = await raw.fetch(f"SELECT key, task_id FROM {table(backend, 'unique_keys')}")
    assert [tuple(r) for r in rows] == [("k", new.id)]


# -- end to end --------------------------------------------------------------------------


async def test_a_unique_task_runs_once_and_its_key_is_free_after(manager: TaskManager) -> None:
    runs: list[int] = []

    @manager.task(name="send_invoice")
    async def send_invoice(order: int) -> int:
        runs.append(order)
        return order * 10

    first = await send_invoice.options(unique_key="invoice-42").enqueue(42)
    second = await send_invoice.options(unique_key="invoice-42").enqueue(42)
    assert not first.deduplicated
    assert second.deduplicated
    assert second.id == first.id
    async with manager.worker(concurrency=2):
        assert await second.result(timeout=10) == 420
        third = await send_invoice.options(unique_key="invoice-42").enqueue(42)
        assert not third.deduplicated  # its holder succeeded: the key is free
        assert await third.result(timeout=10) == 420
        windowed = await send_invoice.options(unique_key="w", unique_for=3600).enqueue(1)
        await windowed.result(timeout=10)
        after = await send_invoice.options(unique_key="w").enqueue(1)
        assert after.deduplicated
        assert after.id == windowed.id  # held for its window
    assert runs == [42, 42, 1]


# -- the migration ---------------------------------------------------------------------


async def test_a_version_5_schema_gains_the_unique_keys_table(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    try:
        with monkeypatch.context() as older:
            older.setattr(_schema, "SCHEMA_VERSION", UNIQUES_VERSION - 1)
            old = open_backend(url)
            task = make_task(NAME)
            await old.enqueue_atomically([task], [old.to_message(task)])
            await old.close()
        assert await raw.fetchval("SELECT to_regclass($1)", f"{schema}.unique_keys") is None
        new = open_backend(url)
        try:
            lines = await new.migrate()
            assert lines == [
                f"postgresql schema {schema}: version {n} ({_schema.MIGRATIONS[n - 1][0]})"
                for n in range(UNIQUES_VERSION, SCHEMA_VERSION + 1)
            ]
            assert await new.get(task.id) == task
            key_task = unique_task("k")
            assert await enqueue(new, key_task, unique_task("k")) == [None, key_task.id]
        finally:
            await new.close()
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
