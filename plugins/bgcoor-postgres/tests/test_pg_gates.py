"""Rate and concurrency limits in PostgreSQL beyond the shared GateContract: what ungated
and gated tasks cost in statements, records left untouched while a task waits, reservers
on separate backends racing for the same slots, the gate stored by every enqueue path,
slots freed across processes, the sweep, a corrupt gate, and the migration that adds it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import SCHEMA_VERSION, PostgresBackend, _schema, backend_of, parse_postgres_url
from bgcoor_postgres._testing import SERVER_URL, is_type_lookup, new_schema_name

from bgcoor_core import (
    Fire,
    FireOutcome,
    Reservation,
    ScheduleDefinition,
    Task,
    TaskManager,
    TaskStatus,
)
from bgcoor_core.kit import GATE_HEADER, Gate
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server
URL = Callable[..., str]
NAME = "pg.gated"
#: The schema version that added gates.
GATES_VERSION = 7


def open_backend(url: str) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), make_test_codec())


def gated(gate: Gate | None, **fields: Any) -> Task:
    task = make_task(NAME, **fields)
    if gate is not None:
        task.headers[GATE_HEADER] = gate.encode()
    return task


async def take(backend: PostgresBackend, limit: int = 100, **options: Any) -> list[Reservation]:
    options.setdefault("lease", 30)
    return await backend.reserve(options.pop("queues", ["default"]), limit=limit, **options)


def table(backend: PostgresBackend, name: str) -> str:
    return f'"{backend.target.schema}".{name}'


def count_statements(backend: PostgresBackend) -> Callable[[], Counter[str]]:
    """Statements the backend's pooled connections run, by name (SQL keyword for the
    others: BEGIN, COMMIT), cleared on each call of the returned function."""
    names = {sql: name for name, sql in vars(backend.sql).items() if isinstance(sql, str)}
    names |= {sql: name for name, sql in vars(backend._gates.sql).items()}
    seen: list[str] = []
    backend._db.observer = lambda query: None if is_type_lookup(query) else seen.append(query)

    def counted() -> Counter[str]:
        found = Counter(names.get(q, q.split()[0].upper().rstrip(";")) for q in seen)
        seen.clear()
        return found

    return counted


# -- what it costs ----------------------------------------------------------------------


async def test_ungated_tasks_run_the_statements_they_always_did(backend: PostgresBackend) -> None:
    counted = count_statements(backend)
    await backend.migrate()
    counted()
    tasks = [make_task(NAME) for _ in range(4)]
    await backend.push_many(tasks[:2])
    await backend.enqueue_atomically(tasks[2:], [backend.to_message(t) for t in tasks[2:]])
    assert counted() == Counter(push=1, enqueue=1)  # not their gated twins
    first, second, third, fourth = await take(backend, limit=4)
    assert counted() == Counter(reserve=1)
    await backend.ack(first)
    await backend.nack(second)
    await backend.dead_letter(third, "test")
    done = fourth.task.model_copy(update={"status": TaskStatus.SUCCEEDED})
    await backend.complete(fourth, done, ttl=None)
    assert counted() == Counter(ack=1, nack=1, dead_letter=1, complete=1)
    assert [r.task.id for r in await take(backend)] == [second.task.id]
    assert counted() == Counter(reserve=1)


async def test_a_gated_reserve_adds_one_gate_step_per_round(backend: PostgresBackend) -> None:
    counted = count_statements(backend)
    await backend.migrate()
    tasks = [gated(Gate("k", concurrency=1)) for _ in range(3)]
    ids = [t.id for t in tasks]
    counted()
    await backend.push_many(tasks)
    assert counted() == Counter(push_gated=1)
    step = Counter({"BEGIN": 1, "lock": 1, "load": 1, "apply": 1, "COMMIT": 1})
    (held,) = await take(backend, limit=1)
    assert held.task.id == ids[0]
    assert counted() == Counter(reserve=1) + step
    # the next one parks: its key is saturated, so the one waiting behind it parks in the
    # same step (one more statement), and a second round finds the queue empty
    assert await take(backend, limit=1) == []
    assert counted() == Counter(reserve=2, behind=1) + step
    await backend.ack(held)  # frees the slot, in the ack statement itself
    assert counted() == Counter(ack=1)
    assert [r.task.id for r in await take(backend, limit=1)] == [ids[1]]


async def test_a_backlog_behind_a_limit_waits_in_one_step(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    counted = count_statements(backend)
    await backend.migrate()
    rated = [gated(Gate("rate", 30.0)) for _ in range(120)]
    limited = [gated(Gate("slots", concurrency=1)) for _ in range(120)]
    await backend.push_many(rated)
    await backend.push_many(
        limited,
    )
    counted()
    got = await take(backend, limit=2)
    assert [r.task.id for r in got] == [rated[0].id, limited[0].id]
    # the second rated task is deferred: its key is saturated, and all the rated ones
    # behind it are given their slots by one more statement; a second round takes the
    # first limited task
    step = Counter({"BEGIN": 1, "lock": 1, "load": 1, "apply": 1, "COMMIT": 1})
    assert counted() == Counter(reserve=2, behind=1) + step + step
    assert await take(backend, limit=2) == []  # the limited ones park, all in one step
    assert counted() == Counter(reserve=2, behind=1) + step
    m = table(backend, "messages")
    slots = await raw.fetch(
        f"SELECT extract(epoch FROM available_at)::float8 FROM {m} WHERE admitted ORDER BY 1"
    )
    assert len(slots) == 119
    gaps = {round(b[0] - a[0], 3) for a, b in itertools.pairwise(slots)}
    assert gaps == {30.0}  # each its own slot, in order
    parked = await raw.fetch(f"SELECT id FROM {m} WHERE state = 'parked' ORDER BY seq")
    assert [r[0] for r in parked] == [t.id for t in limited[1:]]


# -- a waiting task's record ------------------------------------------------------------


async def test_deferred_and_parked_tasks_records_stay_as_they_were(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    rated = [gated(Gate("rate", 30.0), attempts=2) for _ in range(2)]
    limited = [gated(Gate("slots", concurrency=1), attempts=2) for _ in range(2)]
    tasks = rated + limited
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    got = {r.task.id: r for r in await take(backend)}
    assert set(got) == {rated[0].id, limited[0].id}
    assert all(r.started for r in got.values())  # marked running by the gate step
    for task in (rated[0], limited[0]):
        stored = await backend.get(task.id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (TaskStatus.RUNNING, 3)
    for task in (rated[1], limited[1]):
        assert await backend.get(task.id) == task  # pending, attempts 2: untouched
    rows = await raw.fetch(
        f"SELECT m.id, m.state, m.admitted, m.available_at > clock_timestamp() AS later, "
        f"m.deliveries, t.started_at, t.before_status FROM {table(backend, 'messages')} m "
        f"JOIN {table(backend, 'tasks')} t USING (id) WHERE m.id = ANY($1::text[])",
        [rated[1].id, limited[1].id],
    )
    found = {r["id"]: tuple(r)[1:] for r in rows}
    assert found == {
        rated[1].id: ("ready", True, True, 0, None, None),  # deferred to its rate slot
        limited[1].id: ("parked", False, False, 0, None, None),
    }


# -- racing reservers -------------------------------------------------------------------


async def test_reservers_on_separate_backends_never_hold_more_than_the_limit(
    pg_url: URL, raw: asyncpg.Connection[Any]
) -> None:
    url = pg_url(pool_size=2)
    first = open_backend(url)
    await first.migrate()
    backends = [first] + [open_backend(url.replace("&temporary=true", "")) for _ in range(7)]
    gate = Gate("race", concurrency=2)
    holding: set[str] = set()
    most = 0
    done: list[str] = []

    async def reserver(backend: PostgresBackend, seed: int, wanted: int) -> None:
        nonlocal most
        rng = random.Random(seed)
        while len(done) < wanted:
            got = await take(backend, limit=rng.choice((1, 2, 4)), timeout=0.2)
            holding.update(r.task.id for r in got)  # all of them hold a slot from now on
            most = max(most, len(holding))
            assert len(holding) <= 2, holding
            for reservation in got:
                await asyncio.sleep(rng.random() * 0.01)
                holding.discard(reservation.task.id)  # (before the ack: never undercounted)
                await backend.ack(reservation)
                done.append(reservation.task.id)

    try:
        for round_ in range(12):
            tasks = [gated(gate) for _ in range(8)]
            await first.push_many(tasks)
            wanted = len(done) + len(tasks)
            await asyncio.gather(
                *(reserver(b, round_ * 8 + n, wanted) for n, b in enumerate(backends))
            )
            assert sorted(done[-8:]) == sorted(t.id for t in tasks)  # each ran once
        assert most == 2
        assert len(done) == len(set(done)) == 96
        left = await raw.fetchval(f"SELECT count(*) FROM {table(first, 'messages')}")
        assert left == 0
    finally:
        for backend in reversed(backends):
            await backend.close()


async def test_racing_reservers_give_each_task_its_own_rate_slot(pg_url: URL) -> None:
    url = pg_url()
    first = open_backend(url)
    await first.migrate()
    backends = [first] + [open_backend(url.replace("&temporary=true", "")) for _ in range(7)]
    interval = 5.0  # far longer than the race takes: every slot after the first is ahead
    try:
        for backend in backends:
            await backend.stats("default")  # pools open: the reserves below race
        tasks = [gated(Gate("rated", interval)) for _ in range(10)]
        await first.push_many(tasks)
        batches = await asyncio.gather(*(take(b, limit=5) for b in backends))
        assert sum(len(batch) for batch in batches) == 1  # one slot now, the rest later
        rows = await first._db.run(
            lambda c: c.fetch(
                "SELECT extract(epoch FROM available_at)::float8 FROM "
                f"{table(first, 'messages')} WHERE admitted ORDER BY 1"
            )
        )
        slots = [r[0] for r in rows]
        assert len(slots) == 9
        gaps = [b - a for a, b in itertools.pairwise(slots)]
        assert all(abs(gap - interval) < 1e-3 for gap in gaps), gaps  # none shared
    finally:
        for backend in reversed(backends):
            await backend.close()


# -- every enqueue path keeps the gate ----------------------------------------------------


async def test_enqueue_in_and_unique_enqueues_store_the_gate(manager: TaskManager) -> None:
    @manager.task(name="limited", concurrency_limit=1)
    async def limited(n: int) -> None: ...

    backend = backend_of(manager)
    await backend.migrate()
    conn = await asyncpg.connect(backend.target.dsn)
    try:
        async with conn.transaction():
            plain = [limited.build((n,), {}) for n in range(2)]
            keyed = limited.build((2,), {}, unique_key="once")
            assert await backend.enqueue_in(conn, plain) == [None, None]
            assert await backend.enqueue_in(conn, [keyed]) == [None]
        gates = await conn.fetch(f"SELECT DISTINCT gate FROM {table(backend, 'messages')}")
        assert [g[0] for g in gates] == [plain[0].headers[GATE_HEADER]]
    finally:
        await conn.close()
    held = await take(backend)
    assert len(held) == 1  # one slot for the three
    assert (await backend.stats("default")).scheduled == 2


async def test_schedule_fires_and_requeued_dead_letters_keep_the_gate(
    backend: PostgresBackend,
) -> None:
    gate = Gate("k", concurrency=1)
    await backend.put_schedules([ScheduleDefinition(id="s", task=NAME, every_ms=1000)])
    fired = gated(gate, headers={"bgcoor-schedule": "s", GATE_HEADER: gate.encode()})
    outcome = await backend.fire([Fire("s", 1_790_000_000_000, fired, backend.to_message(fired))])
    assert outcome == [FireOutcome.FIRED]
    other = gated(gate)
    await backend.push(other)
    (held,) = await take(backend)  # the fired task holds the key's slot: the other parks
    assert held.task.id == fired.id
    await backend.dead_letter(held, "test")  # frees it
    (second,) = await take(backend)
    assert second.task.id == other.id
    assert await backend.requeue_dead("default") == [fired.id]
    assert await take(backend) == []  # back with its gate: it waits for the slot
    await backend.ack(second)
    assert [r.task.id for r in await take(backend)] == [fired.id]


# -- settles free slots -------------------------------------------------------------------


async def test_a_slot_freed_on_one_backend_wakes_a_reserver_on_another(pg_url: URL) -> None:
    url = pg_url(poll_interval=30)  # only the NOTIFY can wake it in time
    first = open_backend(url)
    await first.migrate()
    second = open_backend(url.replace("&temporary=true", ""))
    try:
        tasks = [gated(Gate("k", concurrency=1)) for _ in range(2)]
        await first.push_many(tasks)
        (held,) = await take(first)
        assert await take(second, timeout=0) == []  # parks the other
        waiting = asyncio.ensure_future(take(second, timeout=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        started = asyncio.get_running_loop().time()
        await first.ack(held)
        (freed,) = await asyncio.wait_for(waiting, 5)
        assert freed.task.id == tasks[1].id
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await second.close()
        await first.close()


async def test_a_worker_runs_limited_tasks_one_per_key_and_frees_slots_by_completing(
    manager: TaskManager,
) -> None:
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    together = 0

    @manager.task(name="sync", concurrency_limit=1, limit_key=lambda account, n: account)
    async def sync(account: str, n: int) -> int:
        nonlocal together
        running[account] += 1
        most[account] = max(most[account], running[account])
        together = max(together, sum(running.values()))
        await asyncio.sleep(0.05)
        running[account] -= 1
        return n

    handles = [await sync.enqueue(account, n) for n in range(4) for account in ("a", "b")]
    async with manager.worker(concurrency=6):
        results = [await h.result(timeout=20) for h in handles]
    assert results == [n for n in range(4) for _ in ("a", "b")]
    assert most == Counter(a=1, b=1)
    assert together == 2  # the two keys ran side by side
    backend = backend_of(manager)
    assert (await backend.stats("default")).scheduled == 0


# -- the sweep ------------------------------------------------------------------------------


async def test_the_sweep_deletes_idle_keys_and_releases_slots_of_lost_leases(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    await backend.push_many([gated(Gate("rate", 3600.0)), gated(Gate("rate", 3600.0))])
    await take(backend)
    lost = gated(Gate("slot", concurrency=1), queue="nobody")
    parked = gated(Gate("slot", concurrency=1), queue="other")
    await backend.push_many([lost])
    await take(backend, queues=["nobody"], lease=1.0)  # its worker dies; nobody consumes
    await backend.push_many([parked])
    assert await take(backend, queues=["other"]) == []  # parked behind the live lease
    keys = table(backend, "gate_keys")
    await backend.delete_expired()
    assert {r[0] for r in await raw.fetch(f"SELECT key FROM {keys}")} == {"rate"}  # in use
    await asyncio.sleep(1.1)
    await raw.execute(f"UPDATE {keys} SET tat = tat - 7200")  # the rate's slots are past
    await backend.delete_expired()
    assert await raw.fetchval(f"SELECT count(*) FROM {keys}") == 0
    # the lost lease's slot was released: the parked task is ready again
    assert [r.task.id for r in await take(backend, queues=["other"])] == [parked.id]


async def test_the_sweep_frees_parked_tasks_that_nothing_would_release(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    tasks = [gated(Gate("k", concurrency=1)) for _ in range(3)]
    await backend.push_many(tasks)
    (held,) = await take(backend)
    assert await take(backend) == []
    m = table(backend, "messages")
    # an operator deletes the holder by hand, and a parked row loses its key
    await raw.execute(f"DELETE FROM {m} WHERE id = $1", held.task.id)
    await raw.execute(f"UPDATE {m} SET slot_key = NULL WHERE id = $1", tasks[2].id)
    assert await take(backend) == []  # nothing released them
    await backend.delete_expired()  # both are ready again: the reserve decides them
    (first,) = await take(backend)
    assert first.task.id == tasks[1].id  # the older one takes the free slot
    state = f"SELECT state, slot_key FROM {m} WHERE id = $1"
    assert tuple(await raw.fetchrow(state, tasks[2].id)) == ("parked", "k")  # parked again
    await backend.ack(first)
    assert [r.task.id for r in await take(backend)] == [tasks[2].id]


# -- indexes ----------------------------------------------------------------------------


async def test_the_gate_steps_lookups_are_served_by_indexes(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    await backend.push_many([gated(Gate(f"k{n % 50}", concurrency=1)) for n in range(1000)])
    while await take(backend):  # 50 holders, the rest parked
        pass
    m = table(backend, "messages")
    load = backend._gates.sql.load.replace("$1::text[]", "'{a,b}'::text[]").replace(
        "$2::text[]", "'{k1,k2}'::text[]"
    )
    unpark = (  # free_slots' look-up of a key's first parked message
        f"SELECT p.id FROM {m} p WHERE p.slot_key = 'k1' AND p.state = 'parked' "
        "ORDER BY p.priority DESC, p.seq LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    behind = (
        backend._gates.sql.behind.replace("$1::text[]", "'{default}'::text[]")
        .replace("$2::text[]", "'{\"- 1 1 k1\"}'::text[]")
        .replace("$3::int[]", "'{1}'::int[]")
        .replace("$4::text[]", "'{a}'::text[]")
        .replace("$5", "500")
    )
    await raw.execute(f"ANALYZE {m}")
    async with raw.transaction():
        await raw.execute("SET LOCAL enable_seqscan = off")  # small tables: show what serves them
        plans = {
            sql: "\n".join(r[0] for r in await raw.fetch(f"EXPLAIN {sql}"))
            for sql in (load, unpark, behind)
        }
    assert "messages_holders" in plans[load], plans[load]
    assert "messages_parked" in plans[unpark], plans[unpark]
    assert "messages_gated" in plans[behind], plans[behind]


# -- a corrupt gate ----------------------------------------------------------------------


async def test_a_corrupt_gate_costs_its_own_task_only(backend: PostgresBackend) -> None:
    bad, good = make_task(NAME), make_task(NAME)
    await backend.push_messages(
        [dataclasses.replace(backend.to_message(bad), gate="not a gate"), backend.to_message(good)]
    )
    got = {r.task.id: r for r in await take(backend)}
    assert set(got) == {bad.id, good.id}
    assert got[good.id].defect is None
    defect = got[bad.id].defect
    assert defect is not None
    assert "gate" in defect
    assert "not a gate" in defect


# -- the migration ---------------------------------------------------------------------


async def test_a_version_6_schema_gains_gates_and_keeps_its_messages(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    try:
        with monkeypatch.context() as older:
            older.setattr(_schema, "SCHEMA_VERSION", GATES_VERSION - 1)
            old = open_backend(url)
            task = make_task(NAME, priority=3)
            await old.enqueue_atomically([task], [old.to_message(task)])
            await old.close()
        assert await raw.fetchval("SELECT to_regclass($1)", f"{schema}.gate_keys") is None
        new = open_backend(url)
        try:
            lines = await new.migrate()
            assert lines == [
                f"postgresql schema {schema}: version {n} ({_schema.MIGRATIONS[n - 1][0]})"
                for n in range(GATES_VERSION, SCHEMA_VERSION + 1)
            ]
            assert await new.get(task.id) == task
            limited = [gated(Gate("k", concurrency=1)) for _ in range(2)]
            await new.push_many(limited)
            got = [r.task.id for r in await take(new)]
            assert got == [task.id, limited[0].id]  # the old one first: priority 3
            stats = await new.stats("default")
            assert (stats.ready, stats.scheduled, stats.reserved) == (0, 1, 2)
        finally:
            await new.close()
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
