"""SQLite rate and concurrency limits (gates): what the shared ``GateContract`` cannot see.

The schema migration that adds them, that a task without a gate costs no statement more
than before, that a held-back message's record is left alone (the reserve marks a taken
one running), that reservers on separate connections and in separate processes never
hold more slots than the limit, and the ways a slot is given back or a parked message
freed that only this backend has (a cancelled reserve's hand-back, the idle sweep).
The limit rules themselves are checked for every broker by ``GateContract``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlite_support import race_processes

from bgcoor_core import Task, TaskManager, TaskStatus
from bgcoor_core._gates import GATE_HEADER, Gate
from bgcoor_core._schedules import Fire, FireOutcome, ScheduleDefinition
from bgcoor_core._unique import UNIQUE_HEADER
from bgcoor_core._workflows import NODE_HEADER, WORKFLOW_HEADER
from bgcoor_core.backends.sqlite import SQLiteBackend, SQLiteOptions
from bgcoor_core.backends.sqlite._backend import _release_rows, _take_rows
from bgcoor_core.backends.sqlite._schema import MIGRATIONS, SCHEMA_VERSION
from bgcoor_core.testing import make_task, make_test_codec

Q = ["default"]
NAME = "limits.task"
SLOTS = Gate(NAME, concurrency=1)
RATE = Gate(NAME, 30.0)  # one every 30 s: a second one waits for its slot


@pytest_asyncio.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(str(tmp_path / "g.db"), make_test_codec())
    yield backend
    await backend.close()


def _gated(gate: Gate | None, **fields: Any) -> Task:
    task = make_task(NAME, **fields)
    if gate is not None:
        task.headers[GATE_HEADER] = gate.encode()
    return task


async def _enqueue(backend: SQLiteBackend, gate: Gate | None, n: int, **fields: Any) -> list[Task]:
    """``n`` tasks with their records, as a producer enqueues them."""
    tasks = [_gated(gate, **fields) for _ in range(n)]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    return tasks


def _sql(backend: SQLiteBackend, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read or write with a raw client, as an operator or another program might."""
    with sqlite3.connect(backend.db.path) as conn:
        return conn.execute(sql, params).fetchall()


def _row(backend: SQLiteBackend, task_id: str) -> tuple[Any, ...]:
    [row] = _sql(
        backend,
        "SELECT state, deliveries, lost, slot_wait, admitted FROM messages WHERE id = ?",
        task_id,
    )
    return row


async def _record(backend: SQLiteBackend, task_id: str) -> Task:
    record = await backend.get(task_id)
    assert record is not None
    return record


# -- the cost for tasks without a gate: none ---------------------------------------------


class _Trace:
    """The statements the backend's connection runs, by their first word."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, statement: str) -> None:
        self.statements.append(statement)

    def verbs(self) -> list[str]:
        verbs = [s.split()[0] for s in self.statements]
        self.statements.clear()
        return verbs


async def _traced(backend: SQLiteBackend) -> _Trace:
    trace = _Trace()

    def install(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(trace)

    await backend.db.run(install)
    return trace


TX, END = "BEGIN", "COMMIT"
# As measured on the backend before limits existed (commit 10519a7): one taken message is
# its UPDATE, and its record's read and write.
TAKE = ["UPDATE", "SELECT", "UPDATE"]


async def test_tasks_without_a_gate_run_the_statements_they_ran_before(
    backend: SQLiteBackend,
) -> None:
    trace = await _traced(backend)
    await _enqueue(backend, None, 3)
    assert trace.verbs() == [TX, *["INSERT"] * 3, "INSERT", *["INSERT"] * 3, END]  # by row
    first, second = await backend.reserve(Q, lease=30, limit=2)
    assert trace.verbs() == ["SELECT", TX, "SELECT", *TAKE, *TAKE, END]
    await backend.ack(first)
    assert trace.verbs() == [TX, "DELETE", END]
    await backend.extend(second, 30)
    assert trace.verbs() == [TX, "UPDATE", END]
    await backend.nack(second)
    assert trace.verbs() == [TX, "UPDATE", "SELECT", "UPDATE", END]  # and the record back
    [third] = await backend.reserve(Q, lease=30, limit=1)
    assert trace.verbs() == ["SELECT", TX, "SELECT", *TAKE, END]
    await backend.dead_letter(third, "poisoned")
    assert trace.verbs() == [TX, "UPDATE", END]
    await backend.requeue_dead("default")
    assert trace.verbs() == [TX, "UPDATE", END]
    [fourth] = await backend.reserve(Q, lease=30, limit=1)
    trace.verbs()
    done = fourth.task.started(fourth.token, datetime.now(UTC))
    done.status = TaskStatus.SUCCEEDED
    await backend.complete(fourth, done, ttl=None)
    assert trace.verbs() == [TX, "SELECT", "SELECT", "INSERT", "DELETE", END]
    await backend.push_many([make_task()])
    assert trace.verbs() == [TX, "INSERT", "INSERT", END]


async def test_only_a_gated_message_pays_for_its_gate(backend: SQLiteBackend) -> None:
    backend._next_sweep = time.monotonic() + 3600  # an idle reserve's sweep is not counted
    trace = await _traced(backend)
    await _enqueue(backend, SLOTS, 2)
    await _enqueue(backend, RATE, 1, queue="rated")
    trace.verbs()
    [held] = await backend.reserve(Q, lease=30, limit=1)
    assert trace.verbs() == ["SELECT", TX, "SELECT", "SELECT", *TAKE, END]  # its holders
    assert await backend.reserve(Q, lease=30, limit=1) == []
    assert trace.verbs() == ["SELECT", TX, "SELECT", "SELECT", "UPDATE", "SELECT", END]  # parked
    await backend.ack(held)
    assert trace.verbs() == [TX, "DELETE", "UPDATE", END]  # the parked one is ready again
    [rated] = await backend.reserve(["rated"], lease=30, limit=1)
    assert trace.verbs() == ["SELECT", TX, "SELECT", "SELECT", "INSERT", *TAKE, END]  # its tat
    await backend.ack(rated)
    assert trace.verbs() == [TX, "DELETE", END]  # no slot held: nothing to free


# -- a held-back message: only moved, its record untouched -------------------------------


async def test_a_parked_or_deferred_message_keeps_its_record_pending(
    backend: SQLiteBackend,
) -> None:
    slots = await _enqueue(backend, SLOTS, 2)
    rated = await _enqueue(backend, Gate("other", 30.0), 2)
    got = await backend.reserve(Q, lease=30, limit=10)
    assert {r.task.id for r in got} == {slots[0].id, rated[0].id}
    assert all(r.started for r in got)  # the reserve marked these running
    for waiting in (slots[1], rated[1]):
        record = await _record(backend, waiting.id)
        assert record == waiting  # as enqueued: pending, no attempt, no lease
        assert (record.status, record.attempts, record.lease_token) == (TaskStatus.PENDING, 0, None)
    # not delivered either: no delivery counted, parked / given its rate slot
    assert _row(backend, slots[1].id) == ("ready", 0, 0, 1, 0)
    assert _row(backend, rated[1].id) == ("ready", 0, 0, 0, 1)
    [due] = _sql(backend, "SELECT available_at FROM messages WHERE id = ?", rated[1].id)
    assert due[0] > time.time() + 25


async def test_a_lost_holder_that_finds_its_slot_taken_is_parked_and_counted_lost(
    backend: SQLiteBackend,
) -> None:
    [first] = await _enqueue(backend, SLOTS, 1)
    [lost] = await backend.reserve(Q, lease=0.2, limit=1)
    await asyncio.sleep(0.3)  # its worker died: the lease ran out
    [urgent] = await _enqueue(backend, SLOTS, 1, priority=5)
    [taken] = await backend.reserve(Q, lease=30, limit=1)  # the free slot goes to it
    assert taken.task.id == urgent.id
    assert await backend.reserve(Q, lease=30, limit=10) == []  # the lost one parks
    assert _row(backend, first.id) == ("ready", 1, 1, 1, 0)  # its loss is counted
    record = await _record(backend, first.id)  # left as the lost delivery wrote it
    assert (record.status, record.lease_token, record.attempts) == (
        TaskStatus.RUNNING,
        lost.token,
        1,
    )
    await backend.ack(taken)
    [again] = await backend.reserve(Q, lease=30, limit=1)
    assert (again.task.id, again.deliveries, again.lost, again.started) == (first.id, 2, 1, True)
    record = await _record(backend, first.id)  # from the record before the lost start
    assert (record.status, record.lease_token, record.attempts) == (
        TaskStatus.RUNNING,
        again.token,
        1,
    )


async def test_messages_a_gate_holds_back_do_not_shorten_a_batch(backend: SQLiteBackend) -> None:
    limited = await _enqueue(backend, SLOTS, 4)
    plain = await _enqueue(backend, None, 2)
    got = await backend.reserve(Q, lease=30, limit=2)
    assert [r.task.id for r in got] == [limited[0].id, plain[0].id]
    stats = await backend.stats("default")
    assert (stats.ready, stats.scheduled, stats.reserved) == (1, 3, 2)


# -- slots given back and parked messages freed ------------------------------------------


async def test_a_cancelled_reserve_frees_its_slot_and_keeps_its_rate_slot(
    backend: SQLiteBackend,
) -> None:
    gate = Gate(NAME, 30.0, concurrency=1)
    first, second = await _enqueue(backend, gate, 2)
    rows = await backend.db.run(_take_rows, Q, 30.0, 10)
    assert [row[0] for row in rows] == [first.id]
    assert _row(backend, second.id)[3] == 1  # parked behind it
    await backend.db.run(_release_rows, rows)  # as a reserve cancelled meanwhile does
    assert _row(backend, second.id)[3] == 0  # its slot is free: the parked one is ready
    # the handed-back one was charged its rate slot already: it is not charged again
    [again] = await backend.reserve(Q, lease=30, limit=10)
    assert again.task.id == first.id
    assert _row(backend, second.id)[3] == 1


async def test_an_ack_that_frees_a_slot_wakes_a_consumer_on_this_backend(tmp_path: Path) -> None:
    backend = SQLiteBackend(
        str(tmp_path / "wake.db"), make_test_codec(), SQLiteOptions(poll_interval=5.0)
    )
    await _enqueue(backend, SLOTS, 2)
    [held] = await backend.reserve(Q, lease=30, limit=10)
    waiting = asyncio.create_task(backend.reserve(Q, lease=30, timeout=4))
    await asyncio.sleep(0.1)  # it parked the second and sleeps until woken (or 5 s pass)
    started = time.monotonic()
    await backend.ack(held)
    got = await waiting
    assert len(got) == 1
    assert time.monotonic() - started < 1.0
    await backend.close()


async def test_the_idle_sweep_frees_a_parked_message_no_live_lease_holds(
    backend: SQLiteBackend,
) -> None:
    [holder] = await _enqueue(backend, SLOTS, 1, queue="elsewhere")
    [parked] = await _enqueue(backend, SLOTS, 1)
    await backend.reserve(["elsewhere"], lease=0.2, limit=1)
    assert await backend.reserve(Q, lease=30, limit=1) == []
    assert _row(backend, parked.id)[3] == 1
    # the holder's worker dies and nobody reserves its queue again: no settle frees the
    # parked one, so an idle reserve's sweep does once the holder's lease has run out
    await asyncio.sleep(0.3)
    assert await backend.reserve(Q, lease=30, limit=1, timeout=0.05) == []  # not due yet
    backend._next_sweep = 0.0
    [got] = await backend.reserve(Q, lease=30, limit=1, timeout=1)  # idle: sweeps, takes it
    assert got.task.id == parked.id
    assert _row(backend, holder.id)[0] == "reserved"  # lost, for its own queue to take again


async def test_idle_keys_rate_state_is_dropped_by_the_cleanup(backend: SQLiteBackend) -> None:
    await _enqueue(backend, Gate("busy", 30.0), 2)
    await _enqueue(backend, Gate("idle", 0.01), 1)
    await backend.reserve(Q, lease=30, limit=10)
    assert {k for (k,) in _sql(backend, "SELECT key FROM gate_rates")} == {"busy", "idle"}
    await asyncio.sleep(0.05)
    await backend.delete_expired()
    assert _sql(backend, "SELECT key FROM gate_rates") == [("busy",)]  # its slot is ahead


# -- every path that stores a message keeps its gate -------------------------------------


def _gates_stored(backend: SQLiteBackend) -> dict[str, str | None]:
    return dict(_sql(backend, "SELECT id, gate FROM messages"))


async def test_every_path_that_stores_a_message_keeps_its_gate(backend: SQLiteBackend) -> None:
    encoded = SLOTS.encode()
    pushed = _gated(SLOTS)
    await backend.push_many([pushed])
    [enqueued] = await _enqueue(backend, SLOTS, 1)
    unique = _gated(SLOTS)
    unique.headers[UNIQUE_HEADER] = "only-one"
    uniques = backend.unique_store(backend)
    assert uniques is not None
    assert await uniques.enqueue_unique([unique], [backend.to_message(unique)]) == [None]
    fired = _gated(SLOTS, headers={"bgcoor-tick": "1"})
    await backend.put_schedules([ScheduleDefinition(id="s", task=NAME, every_ms=1000)])
    fire = Fire("s", 1_790_000_000_000, fired, backend.to_message(fired))
    assert await backend.fire([fire]) == [FireOutcome.FIRED]
    assert _gates_stored(backend) == dict.fromkeys(
        [pushed.id, enqueued.id, unique.id, fired.id], encoded
    )
    # dead-lettered with a new body and put back; handed back with a new body
    [held] = await backend.reserve(Q, lease=30, limit=1)
    await backend.dead_letter(held, "poisoned", held.task.model_copy(update={"attempts": 3}))
    assert await backend.requeue_dead("default") == [held.task.id]
    [held] = await backend.reserve(Q, lease=30, limit=1)
    await backend.nack(held, task=held.task.model_copy(update={"attempts": 1}))
    assert set(_gates_stored(backend).values()) == {encoded}
    assert len(await backend.reserve(Q, lease=30, limit=10)) == 1  # still one at a time


async def test_a_workflow_members_message_keeps_its_gate_while_it_waits(
    backend: SQLiteBackend,
) -> None:
    from bgcoor_core._composition import Graph, Node
    from bgcoor_core._workflows import new_state

    graph = Graph(
        nodes=[Node(key=0, task=NAME), Node(key=1, task=NAME, parents=[0], inputs=[0])],
        result=1,
    )
    tasks = [_gated(None), _gated(SLOTS)]
    for key, task in enumerate(tasks):
        task.headers.update({WORKFLOW_HEADER: "wf-gated", NODE_HEADER: str(key)})
    tasks[1].status = TaskStatus.WAITING
    state = new_state("wf-gated", graph, tasks, [60.0, 60.0], datetime.now(UTC))
    store = backend.workflow_store(backend)
    assert store is not None
    await store.submit_workflow(state, tasks, [backend.to_message(t) for t in tasks])
    assert _sql(backend, "SELECT gate FROM parked") == [(SLOTS.encode(),)]
    [root] = await backend.reserve(Q, lease=30, limit=1)
    done = root.task.started(root.token, datetime.now(UTC))
    done.status, done.finished_at = TaskStatus.SUCCEEDED, datetime.now(UTC)
    await store.complete_member(root, done)
    assert _gates_stored(backend) == {tasks[1].id: SLOTS.encode()}


# -- two workers never take the last slot both -------------------------------------------

ROUNDS = 25
RACERS = 8
LIMIT = 2


async def test_reservers_on_separate_connections_never_hold_more_slots_than_the_limit(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "race.db")
    options = SQLiteOptions(poll_interval=0.001)
    workers = [SQLiteBackend(path, make_test_codec(), options) for _ in range(4)]
    producer = workers[0]
    gate = Gate("race", concurrency=LIMIT)
    held, most = 0, 0
    deliveries: Counter[str] = Counter()

    async def work(backend: SQLiteBackend, left: set[str]) -> None:
        nonlocal held, most
        while left:
            got = await backend.reserve(Q, lease=30, limit=LIMIT, timeout=0.02)
            held += len(got)  # counted after the reserve's commit: never more than held
            most = max(most, held)
            await asyncio.sleep(0.001 * len(got))
            for reservation in got:
                deliveries[reservation.task.id] += 1
                held -= 1  # before the ack commits: never less than held
                await backend.ack(reservation)
                left.discard(reservation.task.id)

    try:
        for _ in range(ROUNDS):
            tasks = await _enqueue(producer, gate, RACERS)
            left = {t.id for t in tasks}
            await asyncio.wait_for(asyncio.gather(*(work(w, left) for w in workers)), 30)
            assert not left
            assert _sql(producer, "SELECT count(*) FROM messages") == [(0,)]
    finally:
        for worker in workers:
            await worker.close()
    assert most == LIMIT  # the limit was reached, never passed
    assert set(deliveries.values()) == {1}
    assert len(deliveries) == ROUNDS * RACERS


# Reserves and acks gated tasks until none is left; prints each holding as
# "<reserved at> <acked at>" (wall clock, inside the real holding: reserve committed
# before, ack commits after).
_RACER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from bgcoor_core.backends.sqlite import SQLiteBackend, SQLiteOptions
    from bgcoor_core.testing import make_test_codec

    async def main(path, go):
        backend = SQLiteBackend(path, make_test_codec(), SQLiteOptions(poll_interval=0.001))
        await backend.stats("default")
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 0.5:
            got = await backend.reserve(["default"], lease=60, limit=2, timeout=0.05)
            if got:
                idle_since = time.monotonic()
            taken = time.time()
            await asyncio.sleep(0.002)
            for r in got:
                print(r.task.id, taken, time.time(), flush=True)
                await backend.ack(r)
        await backend.close()

    asyncio.run(main(*sys.argv[1:]))
    """
)
PROCESSES = 3
TASKS = 60


async def test_processes_sharing_the_file_never_hold_more_slots_than_the_limit(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    tasks = await _enqueue(backend, Gate("race", concurrency=LIMIT), TASKS)
    outs = await race_processes(_RACER, backend.db.path, tmp_path, [[]] * PROCESSES)
    lines = [line.split() for out in outs for line in out.splitlines()]
    assert sorted(line[0] for line in lines) == sorted(t.id for t in tasks)  # each once
    assert sum(1 for out in outs if out.strip()) > 1  # more than one took part
    # at no moment were more than LIMIT holdings under way
    edges = sorted(
        [(float(taken), 1) for _, taken, _ in lines] + [(float(acked), -1) for *_, acked in lines]
    )
    at_once, most = 0, 0
    for _, step in edges:
        at_once += step
        most = max(most, at_once)
    assert most <= LIMIT


# -- through a TaskManager -------------------------------------------------------------


async def test_a_worker_pool_runs_each_key_at_most_its_limit_at_once(
    tmp_path: Path, fast: dict[str, Any]
) -> None:
    url = f"sqlite:///{tmp_path}/pool.db"
    manager = TaskManager(**{**fast, "broker_url": url, "storage_url": url})
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()

    @manager.task(concurrency_limit=2, limit_key=lambda account, **_: account)
    async def charge(*, account: str, n: int) -> int:
        running[account] += 1
        most[account] = max(most[account], running[account])
        await asyncio.sleep(0.03)
        running[account] -= 1
        return n

    handles = [
        await charge.enqueue(account=account, n=n) for n in range(6) for account in ("a", "b")
    ]
    async with manager.worker(concurrency=8):
        results = [await h.result(timeout=20) for h in handles]
    records = [await manager.storage.get(h.id) for h in handles]
    await manager.close()
    assert results == [n for n in range(6) for _ in ("a", "b")]
    assert most == {"a": 2, "b": 2}
    assert all(r is not None and r.attempts == 1 for r in records)  # no attempt spent waiting


# -- the schema ------------------------------------------------------------------------


async def test_a_version_6_file_gets_the_limit_columns_and_keeps_its_messages(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v6.db"
    old = make_task("old.task")
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:6]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 6")
        conn.execute(  # as version 6 wrote a ready message and its record
            "INSERT INTO messages (id, queue, priority, seq, body, state, available_at) "
            "VALUES (?, 'default', 0, 1, ?, 'ready', 0)",
            (old.id, make_test_codec().encode(old)),
        )
        conn.execute("INSERT INTO queues (name) VALUES ('default')")
        conn.execute(
            "INSERT INTO tasks (id, name, queue, status, record) VALUES (?, ?, ?, ?, ?)",
            (old.id, old.name, old.queue, old.status.value, old.model_dump_json()),
        )
    backend = SQLiteBackend(str(path), make_test_codec())
    assert await backend.migrate() == [
        f"{path}: schema version {v}" for v in range(7, SCHEMA_VERSION + 1)
    ]
    [reservation] = await backend.reserve(Q, lease=30, limit=10)
    assert (reservation.task.id, reservation.started) == (old.id, True)
    await backend.ack(reservation)
    await _enqueue(backend, SLOTS, 2)
    assert len(await backend.reserve(Q, lease=30, limit=10)) == 1  # the limit holds
    await backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
        [take_index] = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'messages_take'"
        ).fetchone()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert columns[-4:] == ["gate", "slot_key", "slot_wait", "admitted"]
    assert "slot_wait = 0" in take_index  # a parked message is out of the reserve's sight
    assert {"gate_rates", "messages_holders", "messages_waiting"} <= tables


@pytest.mark.parametrize(
    "gate",
    ["nonsense", "- 1 0 k", "0.0 1 - k", "inf 1 - k", "- 0 2 k", "- 1 2 "],
    ids=["no-gate", "no-slot", "no-interval", "endless", "no-burst", "no-key"],
)
async def test_a_gate_that_cannot_be_enforced_is_a_defect(
    backend: SQLiteBackend, gate: str
) -> None:
    victim, good = await _enqueue(backend, None, 2)
    _sql(backend, "UPDATE messages SET gate = ? WHERE id = ?", gate, victim.id)
    got = {r.task.id: r.defect for r in await backend.reserve(Q, lease=30, limit=10)}
    assert got[good.id] is None
    assert "column gate holds" in (got[victim.id] or ""), got
