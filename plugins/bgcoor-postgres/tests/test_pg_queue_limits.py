"""Queue limits on PostgreSQL beyond the shared QueueLimitContract: the statements each
producer step runs (with no limit, exactly those of before), 16 producers on connections
of their own never passing a limit together, the caller's transaction of ``enqueue_in``
(locked until it ends, usable after a refusal), a duplicate found before a refusal, the
steps that are not limited, the index the count reads, the migration, and the manager's
``wait`` policy end to end."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import SCHEMA_VERSION, PostgresBackend, _schema, parse_postgres_url
from bgcoor_postgres._backend import _retrying_insert
from bgcoor_postgres._sql import Statements
from bgcoor_postgres._testing import SERVER_URL, is_type_lookup, new_schema_name
from bgcoor_postgres._uniques import UniqueStatements

from bgcoor_core import (
    Backends,
    ConfigurationError,
    DuplicateTaskError,
    Fire,
    FireOutcome,
    QueueFullError,
    ScheduleDefinition,
    Task,
)
from bgcoor_core.kit import GATE_HEADER, UNIQUE_HEADER, Gate
from bgcoor_core.testing import (
    LONG_LEASE,
    QueueLimitContract,
    check_a_manager_rejects_or_waits_for_room,
    make_task,
    make_test_codec,
)

pytestmark = pytest.mark.server
URL = Callable[..., str]
Q = "default"
OTHER = "unlimited"
NAME = "pg.limited"
#: The schema version that added the index the count reads.
QUEUE_LIMITS_VERSION = 8


class TestPostgresQueueLimitContract(QueueLimitContract):
    """The shared contract, on this plugin's own fixture (also run by
    tests/test_conformance.py)."""

    @pytest.fixture
    def broker(self, backend: PostgresBackend) -> PostgresBackend:
        return backend

    @pytest.fixture
    def completion_storage(self, backend: PostgresBackend) -> PostgresBackend:
        return backend


def open_backend(url: str) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), make_test_codec())


def limit(backend: PostgresBackend, limits: dict[str, int]) -> PostgresBackend:
    """``backend`` wired as the manager wires it for ``BGCOOR_QUEUE_LIMITS``."""
    Backends.pair(backend, backend).limit_queues(limits)
    return backend


def tasks(n: int, queue: str = Q, *, keyed: bool = False) -> list[Task]:
    made = [make_task(NAME, queue=queue) for _ in range(n)]
    if keyed:
        for task in made:
            task.headers[UNIQUE_HEADER] = f"key-{task.id}"
    return made


async def enqueue(backend: PostgresBackend, batch: list[Task]) -> None:
    await backend.enqueue_atomically(batch, [backend.to_message(t) for t in batch])


async def unique(backend: PostgresBackend, batch: list[Task]) -> list[str | None]:
    store = backend.unique_store(backend)
    assert store is not None
    return await store.enqueue_unique(batch, [backend.to_message(t) for t in batch])


def table(backend: PostgresBackend, name: str) -> str:
    return f'"{backend.target.schema}".{name}'


async def left_behind(
    raw: asyncpg.Connection[Any], backend: PostgresBackend, ids: list[str]
) -> int:
    """Rows of these task ids anywhere: messages, records, unique keys they hold."""
    found = 0
    for name, column in (("messages", "id"), ("tasks", "id"), ("unique_keys", "task_id")):
        found += await raw.fetchval(
            f"SELECT count(*) FROM {table(backend, name)} WHERE {column} = ANY($1::text[])", ids
        )
    return int(found)


# -- what no limit costs: the statements of before ---------------------------------------

#: sha256 of the producer statements for schema "bgcoor", as they were before queue
#: limits existed (commit eacac72): a batch into queues without a limit still runs them
#: byte for byte (the migration tests run them against older schemas).
BEFORE_QUEUE_LIMITS = {
    "push": "41d4b2daa94e5359",
    "push_gated": "78a09a63763c7ef7",
    "enqueue": "fa67b082d3b24a56",
    "enqueue_gated": "e72a399a37793277",
    "unique.lock": "289029492360b1dd",
    "unique.holders": "ef7a81991b6cc945",
    "unique.enqueue": "1ed2d6e7b617449f",
    "unique.enqueue_gated": "c6f0862d0427cede",
}


def test_the_producer_statements_are_those_of_before() -> None:
    sql = Statements("bgcoor")
    texts = {name: getattr(sql, name) for name in ("push", "push_gated", "enqueue")}
    texts["enqueue_gated"] = sql.enqueue_gated
    uniques = UniqueStatements(sql)
    for name in ("lock", "holders", "enqueue", "enqueue_gated"):
        texts[f"unique.{name}"] = getattr(uniques, name)
    digests = {n: hashlib.sha256(t.encode()).hexdigest()[:16] for n, t in texts.items()}
    assert digests == BEFORE_QUEUE_LIMITS


def names_of(backend: PostgresBackend) -> dict[str, str]:
    """Statement text -> a name for it (the backend's, its unique store's, its limits')."""
    store = backend.unique_store(backend)
    assert store is not None
    names = {sql: name for name, sql in vars(backend.sql).items() if isinstance(sql, str)}
    for prefix, statements in (("unique", store.sql), ("limits", backend._limits.sql)):
        for name, sql in vars(statements).items():
            if isinstance(sql, str):
                names[sql] = f"{prefix}.{name}"
    return names


async def _measure_steps(
    url: str, raw: asyncpg.Connection[Any], limits: dict[str, int]
) -> dict[str, list[str]]:
    """The statements each producer step sends, in order, by name."""
    backend = limit(open_backend(url), limits)
    seen: list[str] = []
    names = names_of(backend)

    def observe(query: str) -> None:
        if not is_type_lookup(query):
            seen.append(names.get(query, query.strip()))

    def observe_raw(record: Any) -> None:
        observe(record.query)

    backend._db.observer = observe
    raw.add_query_logger(observe_raw)  # the caller's own connection
    steps: dict[str, list[str]] = {}
    gate = Gate("measured", concurrency=5).encode()

    async def measure(step: str, work: Any) -> None:
        seen.clear()
        await work
        await asyncio.sleep(0.01)  # query loggers are called soon after, not at once
        steps[step] = list(seen)

    try:
        await backend.queues()  # the pool is open
        await measure("enqueue", enqueue(backend, tasks(2)))
        gated = tasks(1)
        gated[0].headers[GATE_HEADER] = gate
        await measure("enqueue gated", enqueue(backend, gated))
        await measure("push", backend.push_messages([backend.to_message(t) for t in tasks(3)]))
        await measure("unique", unique(backend, tasks(2, keyed=True)))
        await measure("enqueue_in", backend.enqueue_in(raw, tasks(1)))
        await measure("enqueue_in unique", backend.enqueue_in(raw, tasks(1, keyed=True)))
    finally:
        raw.remove_query_logger(observe_raw)
        await backend.close()
    return steps


BEGIN, COMMIT = "BEGIN;", "COMMIT;"
UNLIMITED = {
    "enqueue": ["enqueue"],
    "enqueue gated": ["enqueue_gated"],
    "push": ["push"],
    "unique": [BEGIN, "unique.lock", "unique.enqueue", COMMIT],
    "enqueue_in": ["enqueue"],
    "enqueue_in unique": [BEGIN, "unique.lock", "unique.enqueue", COMMIT],
}


async def test_queues_without_a_limit_run_the_statements_of_before_and_no_more(
    pg_url: URL, raw: asyncpg.Connection[Any]
) -> None:
    """With no limits, or limits on other queues only, every producer step sends what it
    sent before (one statement, no transaction); with a limit on its queue, the same
    insert inside a READ COMMITTED transaction after the lock and the count."""
    assert await _measure_steps(pg_url(), raw, {}) == UNLIMITED
    assert await _measure_steps(pg_url(), raw, {"elsewhere": 5}) == UNLIMITED
    check = ["limits.lock", "limits.waiting"]
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED;"
    limited = {
        step: [begin, *check, *statements, COMMIT]
        for step, statements in UNLIMITED.items()
        if statements[0] != BEGIN
    }
    limited["unique"] = [begin, "unique.lock", *check, "unique.enqueue", COMMIT]
    limited["enqueue_in unique"] = [begin, "unique.lock", *check, "unique.enqueue", COMMIT]
    steps = await _measure_steps(pg_url(), raw, {Q: 100_000})
    assert steps == limited


# -- one transaction, all or nothing -------------------------------------------------------


async def test_sixteen_producers_on_their_own_connections_never_pass_a_limit(
    pg_url: URL, raw: asyncpg.Connection[Any]
) -> None:
    """16 producers at once, each on a backend (so a connection) of its own, enqueue
    batches of 1 to 3 into a queue limited to 50: plain, pushed, with unique keys, and in
    a transaction of their own connection. Exactly the accepted batches are stored, never
    more than 50 tasks, and the refused ones left no message, record or key."""
    url = pg_url(pool_size=1)
    first = open_backend(url)
    await first.migrate()
    producers = [first] + [open_backend(url.replace("&temporary=true", "")) for _ in range(15)]
    for backend in producers:
        limit(backend, {Q: 50})
    accepted: list[Task] = []
    refused: list[Task] = []
    start = asyncio.Event()

    async def produce(backend: PostgresBackend, seed: int) -> None:
        rng = random.Random(seed)
        own = await asyncpg.connect(backend.target.dsn)
        try:
            await backend.queues()  # connected before the start
            await start.wait()
            for round_ in range(12):
                kind = (round_ + seed) % 4
                batch = tasks(rng.randint(1, 3), keyed=kind == 2)
                try:
                    if kind == 0:
                        await enqueue(backend, batch)
                    elif kind == 1:
                        await backend.push_messages([backend.to_message(t) for t in batch])
                    elif kind == 2:
                        assert await unique(backend, batch) == [None] * len(batch)
                    else:
                        async with own.transaction():
                            await backend.enqueue_in(own, batch)
                except QueueFullError:
                    refused.extend(batch)
                else:
                    accepted.extend(batch)
        finally:
            await own.close()

    try:
        running = [asyncio.create_task(produce(b, n)) for n, b in enumerate(producers)]
        await asyncio.sleep(0.1)
        start.set()
        await asyncio.gather(*running)
        stats = await first.stats(Q)
        assert stats.ready == len(accepted)
        assert 48 <= len(accepted) <= 50  # full, give or take the last batch of up to 3
        ids = [t.id for t in accepted]
        m = table(first, "messages")
        assert await raw.fetchval(f"SELECT count(*) FROM {m} WHERE id = ANY($1)", ids) == len(ids)
        assert len(refused) > 200
        assert await left_behind(raw, first, [t.id for t in refused]) == 0
    finally:
        for backend in reversed(producers):
            await backend.close()


async def test_unique_enqueues_count_only_the_tasks_they_enqueue(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    limit(backend, {Q: 3})
    first = tasks(2, keyed=True)
    assert await unique(backend, first) == [None, None]
    again = [make_task(NAME) for _ in range(3)]
    for task, key_of in zip(again, [*first, None], strict=True):
        task.headers[UNIQUE_HEADER] = f"key-{(key_of or task).id}"
    # two keys held: only the third task is enqueued, and it fits exactly
    assert await unique(backend, again) == [first[0].id, first[1].id, None]
    assert (await backend.stats(Q)).ready == 3
    late = tasks(1, keyed=True)
    with pytest.raises(QueueFullError, match="queue 'default' is full"):
        await unique(backend, late)
    assert await left_behind(raw, backend, [late[0].id]) == 0
    # a batch of 5 of which 3 keys are held enqueues 2: not too large, but full
    batch = tasks(5, keyed=True)
    for task, holder in zip(batch, [*first, again[2]], strict=False):
        task.headers[UNIQUE_HEADER] = f"key-{holder.id}"
    with pytest.raises(QueueFullError, match="queue 'default' is full"):
        await unique(backend, batch)
    assert await left_behind(raw, backend, [t.id for t in batch[3:]]) == 0


async def test_a_taken_id_is_a_duplicate_before_a_full_queue(backend: PostgresBackend) -> None:
    """An enqueue retried after its first try committed unseen finds its own rows: it must
    learn that (DuplicateTaskError: it is in), not that the queue it filled is full."""
    limit(backend, {Q: 2})
    batch = tasks(2)
    await enqueue(backend, batch)
    with pytest.raises(DuplicateTaskError, match=batch[0].id):
        await enqueue(backend, batch)
    with pytest.raises(DuplicateTaskError, match=batch[1].id):
        await backend.push_messages([backend.to_message(batch[1])])
    with pytest.raises(QueueFullError):
        await enqueue(backend, tasks(1))

    # the step the backend retries after a lost connection: its second try finds the rows
    # of the first one, which committed, and that is success
    more = tasks(2, OTHER)
    limit(backend, {OTHER: 2})
    messages = [backend.to_message(t) for t in more]
    statement = backend._enqueue_statement(messages)
    operation = _retrying_insert(
        statement,
        backend._enqueue_args(more, messages),
        backend._limit_check(messages, records=True),
    )
    await backend._db.run(operation)
    await backend._db.run(operation)  # no error: the "retry" of a committed attempt
    assert (await backend.stats(OTHER)).ready == 2


async def test_a_batch_past_the_limit_stores_nothing_even_with_room_for_part_of_it(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    limit(backend, {Q: 5})
    await enqueue(backend, tasks(3))
    refused = [*tasks(2, OTHER), *tasks(3)]  # an unlimited queue in the batch too
    with pytest.raises(QueueFullError, match="queue 'default' is full"):
        await enqueue(backend, refused)
    assert await left_behind(raw, backend, [t.id for t in refused]) == 0
    assert (await backend.stats(OTHER)).ready == 0
    later = tasks(2)
    for task in later:
        task.eta = task.created_at + timedelta(days=1)
    await enqueue(backend, later)  # exactly the limit: scheduled tasks count
    assert (await backend.stats(Q)).scheduled == 2
    with pytest.raises(QueueFullError):
        await backend.push_messages([backend.to_message(t) for t in tasks(1)])


# -- the caller's transaction --------------------------------------------------------------


async def test_enqueue_in_locks_the_queue_until_the_callers_transaction_ends(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    """The caller's transaction takes the last place and holds the queue's lock until it
    commits: a producer that came meanwhile waits for it, then finds the queue full."""
    limit(backend, {Q: 2})
    await enqueue(backend, tasks(1))
    caller = await asyncpg.connect(backend.target.dsn)
    try:
        async with caller.transaction():
            await backend.enqueue_in(caller, tasks(1))
            other = asyncio.create_task(enqueue(backend, tasks(1)))
            await asyncio.sleep(0.3)
            assert not other.done()  # waiting for the caller's lock
        with pytest.raises(QueueFullError):
            await asyncio.wait_for(other, 10)
        assert (await backend.stats(Q)).ready == 2
    finally:
        await caller.close()


async def test_a_refusal_inside_the_callers_transaction_leaves_it_usable(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    limit(backend, {Q: 1})
    await enqueue(backend, tasks(1))
    orders = table(backend, "orders")
    await raw.execute(f"CREATE TABLE {orders} (id int PRIMARY KEY)")
    refused = [*tasks(1), *tasks(1, keyed=True)]
    async with raw.transaction():
        await raw.execute(f"INSERT INTO {orders} VALUES (1)")
        with pytest.raises(QueueFullError):
            await backend.enqueue_in(raw, refused[:1])
        with pytest.raises(QueueFullError):
            await backend.enqueue_in(raw, refused[1:])  # the unique-key path too
        await raw.execute(f"INSERT INTO {orders} VALUES (2)")
        await backend.enqueue_in(raw, tasks(1, OTHER))  # no limit there
    assert await raw.fetchval(f"SELECT count(*) FROM {orders}") == 2
    assert await left_behind(raw, backend, [t.id for t in refused]) == 0
    assert (await backend.stats(OTHER)).ready == 1
    # outside a transaction, enqueue_in opens one of its own
    with pytest.raises(QueueFullError):
        await backend.enqueue_in(raw, tasks(1))
    assert not raw.is_in_transaction()


async def test_a_transaction_with_one_snapshot_is_refused(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    """Its snapshot predates the lock: SERIALIZABLE too would pass a limit that a READ
    COMMITTED producer filled meanwhile (this very case, before it was refused)."""
    limit(backend, {Q: 2})
    await enqueue(backend, tasks(1))
    for isolation in ("repeatable_read", "serializable"):
        refused = [*tasks(1), *tasks(1, keyed=True)]
        async with raw.transaction(isolation=isolation):
            await raw.fetchval("SELECT 1")  # the transaction's snapshot is taken
            await enqueue(backend, tasks(1))  # another producer takes the last place
            for task in refused:
                with pytest.raises(ConfigurationError, match=isolation.replace("_", " ").upper()):
                    await backend.enqueue_in(raw, [task])
        assert await left_behind(raw, backend, [t.id for t in refused]) == 0
        assert (await backend.stats(Q)).ready == 2
        await backend.purge(Q)
        await enqueue(backend, tasks(1))
    async with raw.transaction(isolation="read_uncommitted"):  # (READ COMMITTED, in fact)
        await backend.enqueue_in(raw, tasks(1))
    assert (await backend.stats(Q)).ready == 2


# -- the steps that are not limited --------------------------------------------------------


async def test_hand_backs_dead_letters_put_back_and_schedule_fires_pass_a_full_queue(
    backend: PostgresBackend,
) -> None:
    limit(backend, {Q: 2})
    await enqueue(backend, tasks(2))
    (taken,) = await backend.reserve([Q], lease=LONG_LEASE, limit=1)
    await backend.dead_letter(taken, "for the test")
    await enqueue(backend, tasks(1))  # full again
    assert await backend.requeue_dead(Q) == [taken.task.id]
    await backend.put_schedules([ScheduleDefinition(id="s", task=NAME, every_ms=1000)])
    task = make_task(NAME, headers={"bgcoor-schedule": "s"})
    fired = await backend.fire([Fire("s", 1_790_000_000_000, task, backend.to_message(task))])
    assert fired == [FireOutcome.FIRED]
    assert (await backend.stats(Q)).ready == 4  # past the limit: accepted work
    with pytest.raises(QueueFullError):
        await enqueue(backend, tasks(1))


# -- the count reads an index --------------------------------------------------------------


async def test_the_count_reads_the_waiting_index_alone(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    limit(backend, {Q: 100_000})
    await backend.push_messages([backend.to_message(t) for t in tasks(500)])
    await backend.push_messages([backend.to_message(t) for t in tasks(500, OTHER)])
    m = table(backend, "messages")
    await raw.execute(f"VACUUM ANALYZE {m}")
    waiting = backend._limits.sql.waiting.replace("$1::text[]", "'{default}'::text[]").replace(
        "$2::int[]", "'{100001}'::int[]"
    )
    async with raw.transaction():  # small tables: show what serves them
        await raw.execute("SET LOCAL enable_seqscan = off")
        await raw.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(r[0] for r in await raw.fetch(f"EXPLAIN {waiting}"))
    assert "Index Only Scan using messages_waiting" in plan, plan
    row = await raw.fetchrow(waiting)
    assert row is not None
    assert row[1] == 500


# -- the migration -------------------------------------------------------------------------


async def test_a_version_7_schema_gains_the_index_and_its_queues_are_limited(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    index = f'"{schema}".messages_waiting'
    try:
        with monkeypatch.context() as older:
            older.setattr(_schema, "SCHEMA_VERSION", QUEUE_LIMITS_VERSION - 1)
            old = open_backend(url)
            await enqueue(old, tasks(2))
            await old.close()
        assert await raw.fetchval("SELECT to_regclass($1)", index) is None
        new = limit(open_backend(url), {Q: 3})
        try:
            lines = await new.migrate()
            assert lines == [
                f"postgresql schema {schema}: version {n} ({_schema.MIGRATIONS[n - 1][0]})"
                for n in range(QUEUE_LIMITS_VERSION, SCHEMA_VERSION + 1)
            ]
            assert await raw.fetchval("SELECT to_regclass($1)", index) is not None
            await enqueue(new, tasks(1))  # the old schema's two count
            with pytest.raises(QueueFullError):
                await enqueue(new, tasks(1))
        finally:
            await new.close()
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- the manager ---------------------------------------------------------------------------


async def test_a_manager_on_postgres_rejects_or_waits_for_room(pg_url: URL) -> None:
    await check_a_manager_rejects_or_waits_for_room(pg_url())
