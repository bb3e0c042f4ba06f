"""The schedule store in PostgreSQL beyond the shared ScheduleContract: rows written by
something else, schedulers in separate processes (separate pools) racing for one tick, a
failed enqueue rolling the whole fire back, round trips, and the migration that adds it."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import (
    SCHEMA_VERSION,
    PostgresBackend,
    SchemaNotMigratedError,
    _schema,
    parse_postgres_url,
)
from bgcoor_postgres._schedules import HOLD_LIMIT_MS
from bgcoor_postgres._testing import SERVER_URL, is_type_lookup, new_schema_name

from bgcoor_core import (
    DuplicateTaskError,
    Fire,
    FireOutcome,
    Overlap,
    ScheduleDefinition,
    ScheduleState,
    Task,
)
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server
URL = Callable[..., str]
T0 = 1_790_000_000_000
#: The schema version that added the schedules table.
SCHEDULES_VERSION = 3
STEP = 1000


def open_backend(url: str) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), make_test_codec())


def definition(schedule_id: str, **fields: Any) -> ScheduleDefinition:
    values: dict[str, Any] = {"task": "pg.periodic", "every_ms": STEP, **fields}
    return ScheduleDefinition(id=schedule_id, **values)


def fire_of(
    backend: PostgresBackend, schedule_id: str, tick_ms: int, **fields: Any
) -> tuple[Fire, Task]:
    task = make_task("pg.periodic", headers={"bgcoor-schedule": schedule_id})
    return Fire(schedule_id, tick_ms, task, backend.to_message(task), **fields), task


async def state_of(backend: PostgresBackend, schedule_id: str) -> ScheduleState:
    (entry,) = [e for e in await backend.get_schedules() if e.id == schedule_id]
    return entry.state


async def message_ids(backend: PostgresBackend) -> list[str]:
    rows = await backend._db.run(
        lambda c: c.fetch(f'SELECT id FROM "{backend.target.schema}".messages ORDER BY id')
    )
    return [row[0] for row in rows]


async def test_the_backend_is_its_own_schedule_store(backend: PostgresBackend) -> None:
    assert backend.schedule_store(backend) is backend


# -- rows written by something else ----------------------------------------------------


async def test_a_definition_that_cannot_be_decoded_is_skipped_with_a_warning(
    backend: PostgresBackend, raw: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    await backend.put_schedules([definition("good"), definition("not-a-definition")])
    table = f'"{backend.target.schema}".schedules'
    done = await raw.execute(
        f'UPDATE {table} SET definition = \'{{"id": "not-a-definition"}}\' WHERE id = $1',
        "not-a-definition",
    )
    assert done == "UPDATE 1"  # no task: not a definition
    await raw.execute(
        f"INSERT INTO {table} (id, definition) VALUES ('elsewhere', $1::json)",
        definition("somebody-else").model_dump_json(),
    )
    await raw.execute(f"INSERT INTO {table} (id, definition) VALUES ('a-list', '[1, 2]')")
    with caplog.at_level(logging.WARNING, "bgcoor.postgres"):
        entries = await backend.get_schedules()
    assert [e.id for e in entries] == ["good"]
    assert entries[0].definition == definition("good")
    for name in ("not-a-definition", "elsewhere", "a-list"):
        assert f"skipped schedule '{name}'" in caplog.text
    assert "somebody-else" in caplog.text  # the id the definition names instead
    assert await raw.fetchval(f"SELECT count(*) FROM {table}") == 4  # reported, not deleted
    request, _ = fire_of(backend, "good", T0)
    assert await backend.fire([request]) == [FireOutcome.FIRED]
    await backend.put_schedules([definition("not-a-definition")])  # a redeploy repairs it
    assert [e.id for e in await backend.get_schedules()] == ["good", "not-a-definition"]


async def test_a_last_task_with_an_unknown_status_is_not_active(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    await backend.put_schedules([definition("s", overlap="skip")])
    first, task = fire_of(backend, "s", T0, overlap=Overlap.SKIP)
    assert await backend.fire([first]) == [FireOutcome.FIRED]
    tasks = f'"{backend.target.schema}".tasks'
    await raw.execute(f"UPDATE {tasks} SET status = 'weird' WHERE id = $1", task.id)
    second, _ = fire_of(backend, "s", T0 + STEP, overlap=Overlap.SKIP)
    assert await backend.fire([second]) == [FireOutcome.FIRED]


async def test_a_duplicate_id_in_one_put_keeps_the_last(backend: PostgresBackend) -> None:
    await backend.put_schedules([definition("s"), definition("s", every_ms=5 * STEP)])
    (entry,) = await backend.get_schedules()
    assert entry.definition.every_ms == 5 * STEP


# -- atomicity -------------------------------------------------------------------------


async def test_a_refused_enqueue_rolls_the_whole_batch_back(backend: PostgresBackend) -> None:
    await backend.put_schedules([definition("a"), definition("b")])
    fine, _ = fire_of(backend, "a", T0)
    clash, task = fire_of(backend, "b", T0)
    await backend.save(task)  # a record with the task's id exists: the enqueue refuses
    with pytest.raises(DuplicateTaskError):
        await backend.fire([fine, clash])
    for sid in ("a", "b"):
        state = await state_of(backend, sid)
        assert (state.last_tick_ms, state.fired, state.last_task_id) == (None, 0, None)
    assert await message_ids(backend) == []
    again, again_task = fire_of(backend, "b", T0)
    assert await backend.fire([fine, again]) == [FireOutcome.FIRED] * 2
    assert (await state_of(backend, "b")).last_task_id == again_task.id


async def test_a_fire_must_carry_its_task_and_message_together(
    backend: PostgresBackend,
) -> None:
    await backend.put_schedules([definition("s")])
    task = make_task("pg.periodic")
    with pytest.raises(ValueError, match="both its task and its message"):
        await backend.fire([Fire("s", T0, task, None)])
    assert (await state_of(backend, "s")).last_tick_ms is None


# -- schedulers in separate processes --------------------------------------------------


async def test_two_backends_firing_one_tick_fifty_times_each_fire_it_once(pg_url: URL) -> None:
    url = pg_url()
    first, second = (
        open_backend(url),
        open_backend(url.replace("temporary=true", "temporary=false")),
    )
    try:
        await first.put_schedules([definition("race")])
        for tick in (T0, T0 + STEP, T0 + 2 * STEP):
            requests = [
                (b, fire_of(b, "race", tick)[0]) for _ in range(50) for b in (first, second)
            ]
            outcomes = await asyncio.gather(*(b.fire([r]) for b, r in requests))
            counted = Counter(o for pair in outcomes for o in pair)
            assert counted == Counter({FireOutcome.FIRED: 1, FireOutcome.ALREADY: 99})
        state = await state_of(second, "race")
        assert (state.last_tick_ms, state.fired) == (T0 + 2 * STEP, 3)
        assert len(await message_ids(first)) == 3
        assert state.last_task_id in await message_ids(first)
    finally:
        await second.close()
        await first.close()


async def test_batches_locking_the_same_schedules_in_any_order_do_not_deadlock(
    pg_url: URL,
) -> None:
    url = pg_url()
    first, second = (
        open_backend(url),
        open_backend(url.replace("temporary=true", "temporary=false")),
    )
    ids = [f"s{n}" for n in range(5)]
    try:
        await first.put_schedules([definition(sid) for sid in ids])
        batches = []
        for n in range(20):
            backend = first if n % 2 else second
            order = ids if n % 2 else ids[::-1]
            batches.append((backend, [fire_of(backend, sid, T0)[0] for sid in order]))
        outcomes = await asyncio.gather(*(b.fire(batch) for b, batch in batches))
        per_schedule: Counter[str] = Counter()
        for (_, batch), got in zip(batches, outcomes, strict=True):
            for request, outcome in zip(batch, got, strict=True):
                assert outcome in (FireOutcome.FIRED, FireOutcome.ALREADY)
                per_schedule[request.schedule_id] += outcome is FireOutcome.FIRED
        assert per_schedule == Counter(dict.fromkeys(ids, 1))
        assert len(await message_ids(first)) == len(ids)
    finally:
        await second.close()
        await first.close()


# -- round trips -----------------------------------------------------------------------


async def test_a_batch_costs_a_few_statements_whatever_its_size(pg_url: URL) -> None:
    backend = open_backend(pg_url())
    seen: list[str] = []
    backend._db.observer = lambda query: None if is_type_lookup(query) else seen.append(query)
    names = {sql: name for name, sql in vars(backend._schedules.sql).items()}
    names[backend.sql.enqueue] = "enqueue"
    try:
        ids = [f"s{n}" for n in range(50)]
        await backend.put_schedules([definition(sid, overlap="skip") for sid in ids])
        for overlap, statuses in ((Overlap.ALLOW, 0), (Overlap.SKIP, 1)):
            tick = T0 if overlap is Overlap.ALLOW else T0 + STEP
            seen.clear()
            requests = [fire_of(backend, sid, tick, overlap=overlap)[0] for sid in ids]
            outcomes = await backend.fire(requests)
            expected = FireOutcome.FIRED if statuses == 0 else FireOutcome.SKIPPED
            assert outcomes == [expected] * len(ids)
            counted = Counter(names.get(query, query.split()[0].upper()) for query in seen)
            # the last tasks' statuses are read only when an overlap rule asks for them
            wanted = {"BEGIN;": 1, "lock": 1, "statuses": statuses, "save_states": 1}
            wanted |= {"COMMIT;": 1, "enqueue": 1 - statuses}
            assert +counted == +Counter(wanted), seen
    finally:
        await backend.close()


# -- the migration that adds the table -------------------------------------------------


async def test_an_older_schema_gains_the_schedules_table_and_keeps_its_data(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    try:
        with monkeypatch.context() as older:  # a release from before schedules
            older.setattr(_schema, "SCHEMA_VERSION", SCHEDULES_VERSION - 1)
            old = open_backend(url)
            task = make_task()
            await old.enqueue_atomically([task], [old.to_message(task)])
            await old.close()
        assert await raw.fetchval("SELECT to_regclass($1)", f"{schema}.schedules") is None

        strict = open_backend(f"{url}&auto_migrate=false")
        with pytest.raises(SchemaNotMigratedError, match=f"version {SCHEDULES_VERSION - 1}"):
            await strict.get_schedules()
        lines = await strict.migrate()
        assert lines == [
            f"postgresql schema {schema}: version {n} ({_schema.MIGRATIONS[n - 1][0]})"
            for n in range(SCHEDULES_VERSION, SCHEMA_VERSION + 1)
        ]
        assert "schedules" in lines[0]
        await strict.close()

        new = open_backend(url)
        try:
            assert await new.get(task.id) == task
            await new.put_schedules([definition("s")])
            request, fired = fire_of(new, "s", T0)
            assert await new.fire([request]) == [FireOutcome.FIRED]
            assert sorted(await message_ids(new)) == sorted([task.id, fired.id])
        finally:
            await new.close()
        versions = await raw.fetch(f'SELECT version FROM "{schema}".migrations ORDER BY 1')
        assert [v[0] for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_auto_migration_adds_the_table_to_an_older_schema(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    try:
        with monkeypatch.context() as older:
            older.setattr(_schema, "SCHEMA_VERSION", SCHEDULES_VERSION - 1)
            old = open_backend(url)
            await old.counts()
            await old.close()
        backend = open_backend(url)
        try:
            await backend.put_schedules([definition("s")])  # auto-migrates first
            assert [e.id for e in await backend.get_schedules()] == ["s"]
        finally:
            await backend.close()
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_stopped_scheduler_holding_the_locks_stalls_the_others_only_briefly(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    """A scheduler frozen (SIGSTOP) inside its fire transaction, its row locks held: the
    server ends that session after the hold limit, and another scheduler fires then."""
    await backend.put_schedules([definition("held")])
    frozen = raw.transaction()
    await frozen.start()
    await raw.fetch(backend._schedules.sql.lock, ["held"])  # ... and the client stops here
    started = asyncio.get_running_loop().time()
    request, _ = fire_of(backend, "held", T0)
    assert await asyncio.wait_for(backend.fire([request]), timeout=10) == [FireOutcome.FIRED]
    waited = asyncio.get_running_loop().time() - started
    assert HOLD_LIMIT_MS / 1000 * 0.5 < waited < HOLD_LIMIT_MS / 1000 + 3
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await raw.fetchval("SELECT 1")  # the frozen one's session is gone
