"""How soon a rate-limited task in PostgreSQL goes out once it may, and what its record
says about when: a deferred task without a concurrency limit is taken by the reserve
statement alone when it falls due (it needs no key lock and no slot: its rate slot was
charged when it was deferred); a task the gate step admits at once starts, in its record
and its lease, at the moment of that decision, from which its key's later slots count;
a take that leased something does not also decide the backlog of a key it found
saturated (the next take does)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import PostgresBackend, _gates
from test_pg_gates import count_statements, gated, table, take

from bgcoor_core import Reservation, TaskStatus
from bgcoor_core.kit import Gate
from bgcoor_core.testing import make_task

pytestmark = pytest.mark.server
STEP = Counter({"BEGIN": 1, "lock": 1, "load": 1, "apply": 1, "COMMIT": 1})


async def next_due(backend: PostgresBackend, within: float) -> Reservation:
    """The next task to become deliverable, waiting up to ``within`` seconds."""
    got = await take(backend, limit=1, timeout=within)
    assert got, f"nothing became deliverable within {within}s"
    return got[0]


async def enqueue(backend: PostgresBackend, gate: Gate, n: int) -> list[str]:
    """``n`` tasks with ``gate``, their records stored too (the reserve marks them)."""
    tasks = [gated(gate) for _ in range(n)]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    return [t.id for t in tasks]


# -- a deferred task falls due ------------------------------------------------------------


async def test_a_due_admitted_task_is_taken_by_the_reserve_statement_alone(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    counted = count_statements(backend)
    await backend.migrate()
    ids = await enqueue(backend, Gate("rate", 0.3), 2)
    (first,) = await take(backend, limit=2)  # the second is deferred to its slot
    assert first.task.id == ids[0]
    counted()
    second = await next_due(backend, 2.0)
    assert second.task.id == ids[1]
    seen = counted()
    assert set(seen) == {"reserve"}, seen  # no gate step: no BEGIN, lock, load, apply
    assert second.started
    assert second.defect is None
    assert (second.deliveries, second.lost) == (1, 0)
    row = await raw.fetchrow(
        f"SELECT state, admitted, slot_key FROM {table(backend, 'messages')} WHERE id = $1",
        ids[1],
    )
    assert row is not None
    assert tuple(row) == ("reserved", False, None)  # the mark cleared: a retry pays again
    stored = await backend.get(ids[1])
    assert stored is not None
    assert (stored.status, stored.attempts) == (TaskStatus.RUNNING, 1)
    await backend.nack(second)
    assert await take(backend) == []  # charged again: deferred to the key's next slot
    assert await take(backend) == []


async def test_a_due_admitted_task_with_a_concurrency_limit_still_takes_a_slot(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    counted = count_statements(backend)
    await backend.migrate()
    ids = await enqueue(backend, Gate("both", 0.3, concurrency=2), 2)
    (first,) = await take(backend, limit=2)  # the second is deferred by the rate
    counted()
    second = await next_due(backend, 2.0)
    assert second.task.id == ids[1]
    seen = counted()
    assert seen["lock"] == seen["apply"] == 1, seen  # decided under the key's lock
    slots = await raw.fetch(
        f"SELECT slot_key FROM {table(backend, 'messages')} WHERE id = ANY($1::text[])", ids
    )
    assert [r[0] for r in slots] == ["both", "both"]  # both hold a slot
    await backend.ack(first)
    await backend.ack(second)


async def test_a_corrupt_gate_on_a_due_admitted_task_is_its_defect(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    ids = await enqueue(backend, Gate("rate", 30.0), 2)
    (first,) = await take(backend)
    m = table(backend, "messages")
    await raw.execute(
        f"UPDATE {m} SET gate = 'inf 1 - rate', available_at = clock_timestamp() WHERE id = $1",
        ids[1],
    )
    (bad,) = await take(backend)
    assert bad.task.id == ids[1]
    assert bad.defect is not None
    assert "inf 1 - rate" in bad.defect
    good = make_task("pg.plain")
    await backend.push_messages([dataclasses.replace(backend.to_message(good), gate=None)])
    assert [r.task.id for r in await take(backend)] == [good.id]
    await backend.ack(first)


# -- the moment of admission --------------------------------------------------------------


async def test_an_admitted_tasks_start_is_the_moment_its_slots_count_from(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    interval, lease = 30.0, 45.0
    ids = await enqueue(backend, Gate("rate", interval), 3)
    # the second is deferred, so the third is decided in the same step (the backlog)
    (first,) = await take(backend, limit=2, lease=lease)
    assert first.task.id == ids[0]
    rows = await raw.fetch(
        "SELECT m.id, extract(epoch FROM m.available_at)::float8 AS at, "
        "extract(epoch FROM t.started_at)::float8 AS started "
        f"FROM {table(backend, 'messages')} m JOIN {table(backend, 'tasks')} t USING (id) "
        "WHERE m.id = ANY($1::text[])",
        ids,
    )
    found = {r["id"]: r for r in rows}
    started = found[ids[0]]["started"]
    assert started is not None
    assert found[ids[0]]["at"] == pytest.approx(started + lease, abs=2e-6)  # the lease too
    assert found[ids[1]]["at"] == pytest.approx(started + interval, abs=2e-6)
    assert found[ids[2]]["at"] == pytest.approx(started + 2 * interval, abs=2e-6)
    assert found[ids[1]]["started"] is None  # (still pending)
    assert found[ids[2]]["started"] is None
    tat = await raw.fetchval(f"SELECT tat FROM {table(backend, 'gate_keys')} WHERE key = 'rate'")
    assert tat == pytest.approx(started + 3 * interval, abs=2e-6)
    stored = await backend.get(ids[0])
    assert stored is not None
    assert stored.started_at is not None
    assert stored.started_at.timestamp() == pytest.approx(started, abs=2e-6)


# -- a saturated key's backlog ------------------------------------------------------------


async def test_a_take_that_leased_leaves_a_saturated_keys_backlog_to_the_next(
    backend: PostgresBackend, raw: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gates, "BEHIND", 2)  # the backlog outgrows one step
    counted = count_statements(backend)
    await backend.migrate()
    ids = await enqueue(backend, Gate("rate", 30.0), 8)
    counted()
    got = await take(backend, limit=4)
    assert [r.task.id for r in got] == ids[:1]
    # one step (the three candidates after the first deferred, two behind them); the
    # second round's statement found only more of the saturated key: the take ends
    assert counted() == Counter(reserve=2, behind=1) + STEP
    undecided = (
        f"SELECT id FROM {table(backend, 'messages')} WHERE NOT admitted AND state = 'ready'"
    )
    assert sorted(r[0] for r in await raw.fetch(undecided)) == sorted(ids[6:])
    assert await take(backend, limit=4) == []  # the next take decides them
    assert await raw.fetch(undecided) == []


async def test_a_take_still_goes_on_for_what_it_can_deliver_behind_a_backlog(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gates, "BEHIND", 2)
    ids = await enqueue(backend, Gate("rate", 30.0), 8)
    plain = make_task("pg.plain")
    await backend.push_many([plain])
    got = await take(backend, limit=4)
    assert [r.task.id for r in got] == [ids[0], plain.id]
