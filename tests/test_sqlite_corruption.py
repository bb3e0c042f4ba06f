"""Issue 10, class 1, for SQLite, in-process: a row written by something else costs its own
task, never the queue; ``get``/``list``/``counts``/``dead_letters`` answer; an id that has a
record is refused at enqueue; the database file is private (0600).

The same damage runs through a real worker in ``tests/reliability/corrupt_sqlite.py``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgcoor_core import (
    CorruptRecordError,
    DuplicateTaskError,
    Executor,
    InvalidTransitionError,
    Message,
    Settings,
    Task,
    TaskRegistry,
    TaskStatus,
)
from bgcoor_core.backends.sqlite import SQLiteBackend
from bgcoor_core.backends.sqlite._backend import _insert, _take_rows
from bgcoor_core.backends.sqlite._defects import decode_text, sweep
from bgcoor_core.backends.sqlite._gates import free_stranded
from bgcoor_core.backends.sqlite._records import insert_new
from bgcoor_core.backends.sqlite._schema import migrate
from bgcoor_core.testing import make_task, make_test_codec

Q = ["default"]
CODEC = make_test_codec()
NOT_UTF8 = "CAST(x'41ff42' AS TEXT)"  # text that is not UTF-8, as another writer may store


@pytest_asyncio.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(str(tmp_path / "c.db"), make_test_codec())
    yield backend
    await backend.close()


def args(i: int) -> dict[str, object]:
    return {"args": [i], "kwargs": {}}


def damage(backend: SQLiteBackend, sql: str, *params: object) -> None:
    """Write with a raw client, as an operator's manual fix or an older version might."""
    with sqlite3.connect(backend.db.path) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")  # as a careless writer might
        assert conn.execute(sql, params).rowcount == 1, sql


async def victim_among_good(backend: SQLiteBackend, good: int = 4) -> tuple[Task, list[Task]]:
    """``good`` tasks, one victim in their midst (all enqueued with their records)."""
    tasks = [make_task(payload=args(i)) for i in range(good + 1)]
    victim = tasks[good // 2]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    return victim, [t for t in tasks if t is not victim]


async def reserve_all(backend: SQLiteBackend) -> dict[str, tuple[str | None, bool]]:
    got = await backend.reserve(Q, lease=30, limit=100)
    return {r.task.id: (r.defect, r.started) for r in got}


# -- messages: one column at a time ------------------------------------------------------

MESSAGE_DAMAGE = [
    ("body-as-text", "body = CAST(body AS TEXT)", "column body holds text"),
    ("body-not-utf8-text", f"body = {NOT_UTF8}", "column body holds text that is not UTF-8"),
    ("body-null-as-integer", "body = 7", "column body holds integer '7'"),
    ("deliveries-text", "deliveries = 'many'", "column deliveries holds text 'many'"),
    ("deliveries-not-utf8", f"deliveries = {NOT_UTF8}", "column deliveries holds text that is"),
    ("deliveries-at-maximum", "deliveries = 9223372036854775807", "deliveries holds 92233"),
    ("lost-text", "lost = 'x'", "column lost holds text 'x'"),
    ("lost-negative", "lost = -1", "column lost holds -1"),
    ("lost-real", "lost = 1.5", "column lost holds real '1.5'"),
    ("priority-text", "priority = 'high'", "column priority holds text 'high'"),
    ("seq-blob", "seq = x'00'", "column seq holds a blob of 1 bytes"),
    ("id-not-utf8", f"id = {NOT_UTF8}", "column id holds text that is not UTF-8"),
    ("id-blob", "id = CAST(id AS BLOB)", "column id holds a blob"),
    ("id-null", "id = NULL", "column id holds NULL, not text"),
    ("state-unknown", "state = 'paused'", "column state holds text 'paused', not ready or"),
    ("gate-no-gate", "gate = 'fast please'", "column gate holds text 'fast please', which is no"),
    ("gate-blob", "gate = x'00'", "column gate holds a blob of 1 bytes, not null or text"),
    ("gate-not-utf8", f"gate = {NOT_UTF8}", "column gate holds text that is not UTF-8"),
]


@pytest.mark.parametrize(
    ("change", "reason"), [p[1:] for p in MESSAGE_DAMAGE], ids=[p[0] for p in MESSAGE_DAMAGE]
)
async def test_a_damaged_message_is_a_defect_and_the_good_ones_flow(
    backend: SQLiteBackend, change: str, reason: str
) -> None:
    victim, good = await victim_among_good(backend)
    damage(backend, f"UPDATE messages SET {change} WHERE id = ?", victim.id)
    got = await reserve_all(backend)
    assert {t.id for t in good} <= set(got)
    assert all(got[t.id] == (None, True) for t in good)
    # an unreadable id is renamed after the id its body names, so it settles by that id
    defect, started = got[victim.id]
    assert defect is not None
    assert defect.startswith("corrupt message"), defect
    assert reason in defect
    assert not started
    # the defect is leased like any delivery, not handed out twice
    assert await backend.reserve(Q, lease=30, limit=10) == []


async def test_a_defect_is_dead_lettered_by_the_worker_and_listed(backend: SQLiteBackend) -> None:
    victim, good = await victim_among_good(backend)
    damage(backend, "UPDATE messages SET body = CAST(body AS TEXT) WHERE id = ?", victim.id)
    got = await backend.reserve(Q, lease=30, limit=100)
    registry = TaskRegistry()
    registry.register("contract.task", lambda *a: None)
    executor = Executor(backend, backend, registry, Settings())
    for reservation in got:
        await executor.execute(reservation)
    [letter] = await backend.dead_letters("default")
    assert letter.id == victim.id
    assert "column body holds text" in letter.reason
    assert letter.task is None  # its body cannot be read, the letter is listed all the same
    record = await backend.get(victim.id)
    assert record is not None
    assert record.status is TaskStatus.DEAD
    assert "column body" in str(record.error)
    for task in good:
        assert (await backend.get(task.id)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    assert await backend.reserve(Q, lease=30, limit=100) == []


async def test_a_handed_back_defect_keeps_its_counters(backend: SQLiteBackend) -> None:
    from bgcoor_core.backends.sqlite._backend import _release_rows

    victim, _ = await victim_among_good(backend, good=0)
    damage(backend, "UPDATE messages SET priority = 'x' WHERE id = ?", victim.id)
    rows = await backend.db.run(_take_rows, Q, 30.0, 10)
    await backend.db.run(_release_rows, rows)
    with sqlite3.connect(backend.db.path) as conn:
        assert conn.execute("SELECT deliveries, state FROM messages").fetchall() == [(0, "ready")]


async def test_dead_letters_list_rows_written_by_something_else(backend: SQLiteBackend) -> None:
    victim, _ = await victim_among_good(backend, good=0)
    damage(
        backend,
        f"UPDATE messages SET state = 'dead', reason = {NOT_UTF8}, dead_at = 'then', "
        f"body = CAST(body AS TEXT), id = {NOT_UTF8} WHERE id = ?",
        victim.id,
    )
    [letter] = await backend.dead_letters("default")
    assert (letter.id, letter.reason, letter.task, letter.dead_at) == (
        "A\\xffB",
        "A\\xffB",
        None,
        0,
    )
    assert await backend.requeue_dead("default") == ["A\\xffB"]


async def test_queue_names_that_are_not_utf8_are_skipped(
    backend: SQLiteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    await victim_among_good(backend, good=0)
    damage(backend, f"INSERT INTO queues (name) VALUES ({NOT_UTF8})")
    with caplog.at_level(logging.WARNING, "bgcoor.sqlite"):
        assert await backend.queues() == ["default"]
    assert "not UTF-8" in caplog.text


# -- the idle sweep: a message in a queue nobody can name ---------------------------------


HIDDEN = [
    ("queue-not-utf8", f"queue = {NOT_UTF8}", "column queue holds text that is not UTF-8"),
    ("queue-blob", "queue = x'00'", "column queue holds a blob of 1 bytes"),
    ("available-at-text", "available_at = 'soon'", "column available_at holds text 'soon'"),
    ("available-at-blob", "available_at = x'00'", "column available_at holds a blob of 1"),
]


@pytest.mark.parametrize(("change", "reason"), [h[1:] for h in HIDDEN], ids=[h[0] for h in HIDDEN])
async def test_a_message_no_reserve_can_see_is_swept_to_dead_letters(
    backend: SQLiteBackend, change: str, reason: str
) -> None:
    victim, good = await victim_among_good(backend)
    damage(backend, f"UPDATE messages SET {change} WHERE id = ?", victim.id)
    got = await reserve_all(backend)
    assert set(got) == {t.id for t in good}  # no reserve can see it
    assert await backend.reserve(Q, lease=30, limit=10, timeout=0.05) == []  # idle: sweeps
    [letter] = await backend.dead_letters("default")
    assert letter.id == victim.id
    assert reason in letter.reason
    assert "found by the sweep" in letter.reason
    assert letter.task == victim
    record = await backend.get(victim.id)
    assert record is not None
    assert record.status is TaskStatus.DEAD
    assert record.error == letter.reason


async def test_the_sweep_runs_only_when_idle_and_seldom(backend: SQLiteBackend) -> None:
    from bgcoor_core.backends.sqlite import _defects

    await backend.reserve(Q, lease=30, limit=10, timeout=0.02)  # the first idle sweep
    victim, _ = await victim_among_good(backend, good=0)
    damage(backend, "UPDATE messages SET queue = x'00' WHERE id = ?", victim.id)
    await backend.reserve(Q, lease=30, limit=10, timeout=0.02)
    assert await backend.dead_letters("default") == []  # not due for SWEEP_SECONDS
    backend._next_sweep -= _defects.SWEEP_SECONDS
    await backend.reserve(Q, lease=30, limit=10, timeout=0.02)
    [letter] = await backend.dead_letters("default")
    assert "column queue holds a blob of 1 bytes" in letter.reason


async def test_the_sweep_adds_a_readable_queue_missing_from_the_queues_table(
    backend: SQLiteBackend,
) -> None:
    victim, _ = await victim_among_good(backend, good=0)
    damage(backend, "DELETE FROM queues WHERE name = ?", "default")
    assert await backend.queues() == []
    assert await backend.reserve(["other"], lease=30, limit=10, timeout=0.02) == []
    assert await backend.queues() == ["default"]
    [reservation] = await backend.reserve(Q, lease=30, limit=10)
    assert (reservation.task.id, reservation.defect) == (victim.id, None)


# -- records: one column at a time -------------------------------------------------------

RECORD_DAMAGE = [
    ("status-unknown", "status = 'paused'", "column status holds 'paused', which is no task"),
    ("status-not-utf8", f"status = {NOT_UTF8}", "column status holds text that is not UTF-8"),
    ("status-blob", "status = CAST('pending' AS BLOB)", "column status holds b'pending'"),
    ("record-not-utf8", f"record = {NOT_UTF8}", "column record holds text that is not UTF-8"),
    ("before-start-not-utf8", f"before_start = {NOT_UTF8}", "column before_start holds text"),
]


@pytest.mark.parametrize(
    ("change", "reason"), [p[1:] for p in RECORD_DAMAGE], ids=[p[0] for p in RECORD_DAMAGE]
)
async def test_a_damaged_record_is_a_defect_and_can_be_marked_dead(
    backend: SQLiteBackend, change: str, reason: str
) -> None:
    victim, good = await victim_among_good(backend)
    damage(backend, f"UPDATE tasks SET {change} WHERE id = ?", victim.id)
    got = await reserve_all(backend)
    assert all(got[t.id] == (None, True) for t in good)
    defect, started = got[victim.id]
    assert defect is not None
    assert defect.startswith("corrupt record of task"), defect
    assert reason in defect
    assert "SQLite table tasks" in defect
    assert not started
    if not change.startswith("before_start"):  # the only column ``get`` does not need
        with pytest.raises(CorruptRecordError, match="corrupt record of task"):
            await backend.get(victim.id)
    counts = await backend.counts()
    assert counts[TaskStatus.RUNNING] == len(good)
    if change.startswith("status"):  # an unknown status may only be overwritten as dead
        running = victim.started("t", victim.created_at)
        with pytest.raises(InvalidTransitionError, match="cannot move"):
            await backend.save(running)
    placeholder = Task.model_construct(
        id=victim.id, name="bgcoor.corrupt", queue="default", status=TaskStatus.DEAD, error=defect
    )
    await backend.save(placeholder)
    assert (await backend.get(victim.id)).status is TaskStatus.DEAD  # type: ignore[union-attr]


async def test_get_names_a_status_that_disagrees_with_the_record(backend: SQLiteBackend) -> None:
    task = make_task()
    await backend.save(task)
    damage(backend, "UPDATE tasks SET status = 'succeeded' WHERE id = ?", task.id)
    with pytest.raises(CorruptRecordError, match="status says succeeded, the record says pending"):
        await backend.get(task.id)


async def test_get_names_a_record_that_is_no_task(backend: SQLiteBackend) -> None:
    task = make_task()
    await backend.save(task)
    damage(backend, "UPDATE tasks SET record = '{\"id\": 3}' WHERE id = ?", task.id)
    with pytest.raises(CorruptRecordError, match="column record is no task"):
        await backend.get(task.id)


async def test_counts_never_fail_and_list_skips_what_it_cannot_read(
    backend: SQLiteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = sorted((make_task(payload=i) for i in range(6)), key=lambda t: t.id)
    await backend.save_many(tasks)
    damage(backend, "UPDATE tasks SET status = 'paused' WHERE id = ?", tasks[0].id)
    damage(backend, f"UPDATE tasks SET record = {NOT_UTF8} WHERE id = ?", tasks[1].id)
    damage(backend, f"UPDATE tasks SET id = {NOT_UTF8} WHERE id = ?", tasks[2].id)
    counts = await backend.counts()
    assert set(counts) == set(TaskStatus)
    assert counts[TaskStatus.PENDING] == 5  # the one with a status nobody knows is not counted
    with caplog.at_level(logging.WARNING, "bgcoor.sqlite"):
        page = await backend.list(limit=2)
        # the page is filled from the rows after the skipped ones
        assert [t.id for t in page] == [t.id for t in tasks[3:5]]
        rest = await backend.list(limit=10, after=page[-1].id)
        assert [t.id for t in rest] == [tasks[5].id]  # the id that is not UTF-8 sorts last
    assert caplog.text.count("record skipped while listing") == 3
    assert "its id A\\xffB is not UTF-8" in caplog.text
    assert [t.id for t in await backend.list(status=TaskStatus.PENDING)] == [
        t.id for t in tasks[3:]
    ]


# -- enqueue: an id that has a record is refused, all or nothing -------------------------


@pytest.mark.parametrize("final", [TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.PENDING])
async def test_enqueue_refuses_an_id_that_has_a_record(
    backend: SQLiteBackend, final: TaskStatus
) -> None:
    old = make_task()
    await backend.save(old.model_copy(update={"status": final}))
    fresh = make_task()
    again = make_task(id=old.id)
    batch = [fresh, again]
    with pytest.raises(DuplicateTaskError, match=f"task {old.id} already has a record \\({final}"):
        await backend.enqueue_atomically(batch, [backend.to_message(t) for t in batch])
    assert await backend.get(fresh.id) is None  # nothing of the batch was written
    assert (await backend.get(old.id)).status is final  # type: ignore[union-attr]
    assert await backend.reserve(Q, lease=30, limit=10) == []
    with pytest.raises(DuplicateTaskError, match=old.id):
        await backend.save_many(batch)
    assert await backend.get(fresh.id) is None


async def test_enqueue_refuses_an_id_whose_record_is_corrupt(backend: SQLiteBackend) -> None:
    old = make_task()
    await backend.save(old)
    damage(backend, f"UPDATE tasks SET status = {NOT_UTF8} WHERE id = ?", old.id)
    again = make_task(id=old.id)
    with pytest.raises(DuplicateTaskError, match=r"already has a record \(A\\xffB\)"):
        await backend.enqueue_atomically([again], [backend.to_message(again)])


async def test_an_expired_record_does_not_hold_its_id(backend: SQLiteBackend) -> None:
    old = make_task()
    await backend.save(old.model_copy(update={"status": TaskStatus.SUCCEEDED}), ttl=-1)
    again = make_task(id=old.id, payload="new")
    await backend.enqueue_atomically([again], [backend.to_message(again)])
    assert (await backend.get(old.id)) == again


async def test_a_duplicate_message_is_named(backend: SQLiteBackend) -> None:
    task = make_task()
    await backend.push(task)
    with pytest.raises(DuplicateTaskError, match=f"task {task.id} is already in the broker"):
        await backend.enqueue_atomically([task], [backend.to_message(task)])
    with pytest.raises(DuplicateTaskError, match="appears twice in one batch"):
        await backend.save_many([make_task(id="twice"), make_task(id="twice")])


# -- the file is private ------------------------------------------------------------------


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_a_new_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        backend = SQLiteBackend(str(tmp_path / "p.db"), make_test_codec())
        task = make_task()
        await backend.enqueue_atomically([task], [backend.to_message(task)])
        modes = {name: file_mode(tmp_path / name) for name in ("p.db", "p.db-wal", "p.db-shm")}
        await backend.close()
    finally:
        os.umask(old_umask)
    assert modes == {"p.db": 0o600, "p.db-wal": 0o600, "p.db-shm": 0o600}


async def test_an_existing_database_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "mine.db"
    sqlite3.connect(path).close()
    path.chmod(0o640)
    backend = SQLiteBackend(str(path), make_test_codec())
    await backend.save(make_task())
    await backend.close()
    assert file_mode(path) == 0o640


# -- any garbage in any column: the reserve never fails, the good rows always flow ---------

COLUMNS = [
    *(("messages", c) for c in ("id", "body", "priority", "seq", "available_at", "deliveries")),
    *(("messages", c) for c in ("state", "queue")),
    *(("messages", c) for c in ("lost", "token", "reason", "dead_at")),
    *(("messages", c) for c in ("gate", "slot_key", "slot_wait", "admitted")),
    *(("tasks", c) for c in ("id", "name", "queue", "status", "lease_token", "expires_at")),
    *(("tasks", c) for c in ("record", "before_start")),
]
GARBAGE = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def _fresh() -> tuple[sqlite3.Connection, list[Task]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    tasks = [make_task(payload=i) for i in range(5)]
    conn.execute("BEGIN")
    _insert(conn, [Message(t.id, t.queue, CODEC.encode(t)) for t in tasks])
    insert_new(conn, tasks)
    conn.execute("COMMIT")
    return conn, tasks


def _read_body(body: bytes) -> Task | None:
    try:
        return CODEC.decode(body)
    except Exception:
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    column=st.sampled_from(COLUMNS), value=GARBAGE, as_text=st.booleans(), victim=st.integers(0, 4)
)
def test_garbage_in_any_column_costs_at_most_its_own_task(
    column: tuple[str, str], value: object, as_text: bool, victim: int
) -> None:
    conn, tasks = _fresh()
    table, name = column
    target = tasks[victim].id
    cast = "CAST(? AS TEXT)" if as_text and isinstance(value, bytes) else "?"
    try:
        conn.execute(f"UPDATE {table} SET {name} = {cast} WHERE id = ?", (value, target))
    except sqlite3.IntegrityError:
        return  # the schema itself refuses it (NOT NULL, a duplicate key)
    # what the damage legitimately does: schedule it later, move it to a queue, kill it
    [(q_kind, queue, state, due)] = conn.execute(
        "SELECT typeof(queue), CAST(queue AS BLOB), CAST(state AS BLOB), CASE WHEN "
        "typeof(available_at) IN ('integer', 'real') THEN available_at END "
        "FROM messages WHERE rowid = ?",
        (victim + 1,),
    ).fetchall()
    moved = q_kind == "text" and decode_text(queue) not in (None, "default")
    elsewhere = state == b"dead" or (due is not None and due > time.time()) or moved
    rows = _take_rows(conn, Q, 30.0, 10, _read_body)  # never raises
    conn.execute("BEGIN IMMEDIATE")
    swept = sweep(conn, _read_body)  # what an idle reserve does for rows it cannot see
    free_stranded(conn, time.time())  # and for a row parked where no lease will free it
    conn.execute("COMMIT")
    rows += _take_rows(conn, Q, 30.0, 10, _read_body)
    defects = {row[0]: row[7] for row in rows}
    for task in tasks:
        if task.id != target:
            assert defects[task.id] is None, (column, value)  # a good task is unharmed
    assert all(d is None or d.startswith("corrupt") for d in defects.values()), defects
    # every row is delivered (sound or as a defect) or swept to the dead letters
    assert len(rows) + swept == len(tasks) - bool(elsewhere), (column, value, defects)
    conn.close()
