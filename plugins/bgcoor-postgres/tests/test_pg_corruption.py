"""Issue 10: rows written by something else, and values PostgreSQL cannot take.

A corrupt row costs its own task (a reserve yields it as a defect, reads name it), never
the statement that carries the other tasks; an existing schema is never dropped; a bad
duration, or a NUL in an id, is a clear error at the call instead of a driver error.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import PostgresBackend, parse_postgres_url
from bgcoor_postgres._schema import TemporarySchemaError
from bgcoor_postgres._testing import SERVER_URL, new_schema_name

from bgcoor_core import (
    ConfigurationError,
    CorruptRecordError,
    InvalidNameError,
    InvalidTransitionError,
    Reservation,
    Task,
    TaskStatus,
)
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server
INT_MAX = 2**31 - 1
Q = ["default"]


async def enqueue(backend: PostgresBackend, count: int) -> list[Task]:
    tasks = [make_task(payload=n) for n in range(count)]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    return tasks


async def corrupt(
    raw: asyncpg.Connection[Any], backend: PostgresBackend, table: str, set_sql: str, task_id: str
) -> None:
    """``UPDATE <schema>.<table> SET <set_sql> WHERE id = $1``, for exactly one row."""
    schema = backend.target.schema
    done = await raw.execute(f'UPDATE "{schema}".{table} SET {set_sql} WHERE id = $1', task_id)
    assert done == "UPDATE 1"


async def reserve_all(backend: PostgresBackend, count: int) -> list[Reservation]:
    got = await backend.reserve(Q, lease=30, limit=count + 5, timeout=1)
    assert len(got) == count
    return got


def split(got: list[Reservation], victim: str) -> tuple[Reservation, list[Reservation]]:
    bad = [r for r in got if r.task.id == victim]
    assert len(bad) == 1
    return bad[0], [r for r in got if r.task.id != victim]


# -- a reserve never fails as a whole ----------------------------------------------------


@pytest.mark.parametrize(
    ("set_sql", "expected"),
    [
        (f"deliveries = {INT_MAX}", "deliveries"),
        ("deliveries = -1", "deliveries"),
        (f"lost = {INT_MAX}", "lost"),
        (f"state = 'reserved', available_at = '-infinity', lost = {INT_MAX}", "lost"),
        ("available_at = 'infinity'", "available_at"),
        ("available_at = '200000-01-01'", "available_at"),
    ],
)
async def test_message_bookkeeping_out_of_range_is_a_defect(
    backend: PostgresBackend, raw: asyncpg.Connection[Any], set_sql: str, expected: str
) -> None:
    """A counter at the integer maximum made every reserve fail ("integer out of range");
    a message due at 'infinity' would wait forever. Now each is one defect among good
    tasks, and the defect names the column."""
    tasks = await enqueue(backend, 5)
    victim = tasks[2].id
    await corrupt(raw, backend, "messages", set_sql, victim)
    bad, good = split(await reserve_all(backend, 5), victim)
    assert bad.defect is not None
    assert bad.defect.startswith("corrupt message")
    assert expected in bad.defect
    assert victim in bad.defect
    assert sorted(r.task.payload for r in good) == [0, 1, 3, 4]
    assert all(r.defect is None for r in good)
    await backend.dead_letter(bad, bad.defect)
    [letter] = await backend.dead_letters("default")
    assert (letter.id, letter.reason) == (victim, bad.defect)


async def test_nothing_ready_and_an_infinite_deadline_elsewhere(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    """An idle reserve computes when to look again from the earliest deadline: an
    infinite one ("cannot subtract infinite timestamps") must not make it fail."""
    [task] = await enqueue(backend, 1)
    [held] = await backend.reserve(Q, lease=30)
    await corrupt(raw, backend, "messages", "available_at = '-infinity'", task.id)
    # the row is locked by a concurrent reserve: skipped, but it is the earliest due
    async with raw.transaction():
        await raw.execute(
            f'SELECT 1 FROM "{backend.target.schema}".messages WHERE id = $1 FOR UPDATE',
            task.id,
        )
        assert await backend.reserve(Q, lease=30, timeout=0.2) == []
    assert held.task.id == task.id


async def test_unknown_status_is_a_defect_and_may_only_become_dead(
    backend: PostgresBackend, raw: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A record whose status names no status failed to settle forever (every save was a
    ValueError). The reserve yields it as a defect; reads name it; counts and list go
    on; only ``dead`` may overwrite it (FROM_UNKNOWN_STATUS, compiled into the SQL)."""
    tasks = await enqueue(backend, 3)
    victim = tasks[1]
    await corrupt(raw, backend, "tasks", "status = 'half-done'", victim.id)

    with pytest.raises(CorruptRecordError, match=f"{victim.id}.*unknown status 'half-done'"):
        await backend.get(victim.id)
    counts = await backend.counts()
    assert counts == {**dict.fromkeys(TaskStatus, 0), TaskStatus.PENDING: 2}
    with caplog.at_level(logging.WARNING, "bgcoor.postgres"):
        listed = await backend.list()
    assert {t.id for t in listed} == {tasks[0].id, tasks[2].id}
    assert victim.id in caplog.text

    bad, good = split(await reserve_all(backend, 3), victim.id)
    assert bad.defect is not None
    assert "unknown status 'half-done'" in bad.defect
    assert all(r.started and r.defect is None for r in good)

    with pytest.raises(InvalidTransitionError, match="half-done"):
        await backend.save(victim.model_copy(update={"status": TaskStatus.PENDING}))
    placeholder = Task.model_construct(
        id=victim.id, name="bgcoor.corrupt", queue="default", status=TaskStatus.DEAD, error="x"
    )
    await backend.save(placeholder)
    stored = await backend.get(victim.id)
    assert stored is not None
    assert stored.status is TaskStatus.DEAD


@pytest.mark.parametrize(
    ("set_sql", "problem"),
    [
        ("""record = '{"name": "no id"}'""", "cannot be decoded"),
        ("record = 'null'", "cannot be decoded"),
        ("started_at = 'infinity', lease_token = 't'", "started_at out of range"),
    ],
)
async def test_undecodable_record_is_corrupt_record_error(
    backend: PostgresBackend, raw: asyncpg.Connection[Any], set_sql: str, problem: str
) -> None:
    [task, other] = await enqueue(backend, 2)
    await corrupt(raw, backend, "tasks", set_sql, task.id)
    with pytest.raises(CorruptRecordError, match=f"{task.id}.*{problem}"):
        await backend.get(task.id)
    assert [t.id for t in await backend.list()] == [other.id]


async def test_record_of_another_task_is_corrupt(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    [task, other] = await enqueue(backend, 2)
    schema = backend.target.schema
    await raw.execute(
        f'UPDATE "{schema}".tasks SET record = (SELECT record FROM "{schema}".tasks '
        "WHERE id = $2) WHERE id = $1",
        task.id,
        other.id,
    )
    with pytest.raises(CorruptRecordError, match=f"holds the record of task '{other.id}'"):
        await backend.get(task.id)


async def test_dead_letter_without_reason_or_time(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    [task] = await enqueue(backend, 1)
    await corrupt(raw, backend, "messages", "state = 'dead'", task.id)
    [letter] = await backend.dead_letters("default")
    assert letter.reason == "corrupt dead letter: no reason was stored"
    assert letter.dead_at == 0.0


async def test_hand_back_with_its_before_status_gone(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    """A hand-back restores the status from before_status: NULL there broke the nack
    (status is NOT NULL) with a raw driver error. Now the status the JSON shows."""
    [task] = await enqueue(backend, 1)
    [got] = await backend.reserve(Q, lease=30)
    assert got.started
    await corrupt(raw, backend, "tasks", "before_status = NULL", task.id)
    await backend.nack(got)
    stored = await backend.get(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING
    again = await backend.reserve(Q, lease=30)
    assert [r.started for r in again] == [True]  # a status that may become running


async def test_queues_skips_names_written_by_something_else(
    backend: PostgresBackend, raw: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    await enqueue(backend, 1)
    await raw.execute(f"INSERT INTO \"{backend.target.schema}\".queues VALUES ('not a queue!')")
    with caplog.at_level(logging.WARNING, "bgcoor.postgres"):
        assert await backend.queues() == ["default"]
    assert "not a queue!" in caplog.text


# -- never drop what this process did not create -----------------------------------------


@pytest.mark.parametrize("auto_migrate", ["true", "false"])
async def test_temporary_refused_for_an_existing_schema(
    raw: asyncpg.Connection[Any], auto_migrate: str
) -> None:
    """``?schema=public&temporary=true`` dropped ``public`` with the user's tables on
    close. A schema that existed before is refused, and it survives with its tables."""
    schema = new_schema_name()
    await raw.execute(f'CREATE SCHEMA "{schema}"')
    await raw.execute(f'CREATE TABLE "{schema}".customers (name text)')
    await raw.execute(f"INSERT INTO \"{schema}\".customers VALUES ('ada')")
    url = f"{SERVER_URL}?schema={schema}&temporary=true&auto_migrate={auto_migrate}"
    backend = PostgresBackend(parse_postgres_url(url), make_test_codec())
    try:
        with pytest.raises(TemporarySchemaError, match="temporary=true") as refused:
            await backend.counts()
        assert isinstance(refused.value, ConfigurationError)
        assert schema in str(refused.value)
    finally:
        await backend.close()
    try:
        assert await raw.fetchval(f'SELECT name FROM "{schema}".customers') == "ada"
        created = await raw.fetchval("SELECT to_regclass($1)", f'"{schema}".messages')
        assert created is None, "refused, yet it created tables in the schema"
    finally:
        await raw.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_temporary_schema_of_our_own_is_dropped(raw: asyncpg.Connection[Any]) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}&temporary=true"
    backend = PostgresBackend(parse_postgres_url(url), make_test_codec())
    await backend.counts()
    again = PostgresBackend(parse_postgres_url(url), make_test_codec())  # same process
    await again.counts()
    await again.close()
    await backend.close()
    assert await raw.fetchval("SELECT to_regnamespace($1)", schema) is None


# -- values PostgreSQL cannot take -------------------------------------------------------


async def test_nul_in_ids_and_names_is_a_clear_error(backend: PostgresBackend) -> None:
    """A NUL in a task id gave a raw driver error ("invalid byte sequence")."""
    bad_id = Task.model_construct(**{**make_task().model_dump(), "id": "a\x00b"})
    with pytest.raises(InvalidNameError, match=r"a\\x00b.*NUL"):
        await backend.enqueue_atomically([bad_id], [backend.to_message(bad_id)])
    with pytest.raises(InvalidNameError, match="NUL"):
        await backend.push_messages([backend.to_message(bad_id)])
    with pytest.raises(InvalidNameError, match="NUL"):
        await backend.save_many([bad_id])
    bad_name = make_task().model_copy(update={"name": "x\x00"})
    good = make_task()
    with pytest.raises(InvalidNameError, match="NUL"):
        await backend.save(bad_name)
    await backend.save(good)  # a neighbour of a refused write is unaffected
    with pytest.raises(InvalidNameError, match="NUL"):
        await backend.get("a\x00b")
    with pytest.raises(InvalidNameError, match="NUL"):
        await backend.list(name="a\x00b")
    with pytest.raises(InvalidNameError, match="NUL"):
        await backend.requeue_dead("default", ["a\x00b"])
    assert await backend.get(good.id) == good


BAD_SECONDS = [math.inf, -math.inf, math.nan, 1e13]


@pytest.mark.parametrize("value", BAD_SECONDS)
async def test_absurd_durations_are_value_errors(backend: PostgresBackend, value: float) -> None:
    """A lease of inf or 1e13 s made every reserve fail ("interval out of range"), and a
    result TTL of inf made a task re-run every lease: each is refused at the call."""
    [task] = await enqueue(backend, 1)
    with pytest.raises(ValueError, match="lease must be finite"):
        await backend.reserve(Q, lease=value)
    [got] = await backend.reserve(Q, lease=30)
    with pytest.raises(ValueError, match="lease"):
        await backend.extend(got, value)
    with pytest.raises(ValueError, match="delay"):
        await backend.nack(got, delay=value)
    with pytest.raises(ValueError, match="ttl must be a finite number of seconds"):
        await backend.save(task, ttl=value)
    done = got.task.model_copy(update={"status": TaskStatus.SUCCEEDED})
    with pytest.raises(ValueError, match="ttl must be a finite number of seconds"):
        await backend.complete(got, done, ttl=value)
    await backend.complete(got, done, ttl=60)  # the lease still holds: nothing was written
    stored = await backend.get(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.SUCCEEDED


async def test_eta_out_of_range_is_refused(backend: PostgresBackend) -> None:
    task = make_task()
    message = backend.to_message(task)
    for eta in (math.inf, math.nan, 1e13):
        with pytest.raises(ValueError, match="eta must be a finite Unix timestamp"):
            await backend.push_messages([type(message)(task.id, "default", message.body, 0, eta)])
    assert (await backend.stats("default")).scheduled == 0
