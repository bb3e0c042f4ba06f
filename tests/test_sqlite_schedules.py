"""SQLite schedule store specifics: damaged rows, real processes firing one file, the
schema migration that adds the table, a batch that fails leaving nothing behind, and fires
that another process holding the write lock (stopped inside its transaction) cannot stall.

The fire rule itself is checked for every store by ``ScheduleContract`` (conformance).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bgcoor_core import (
    DuplicateTaskError,
    Fire,
    FireOutcome,
    MemoryStorage,
    Overlap,
    ScheduleDefinition,
    TaskStatus,
)
from bgcoor_core.backends.sqlite import SQLiteBackend, SQLiteOptions
from bgcoor_core.backends.sqlite._schema import MIGRATIONS, SCHEMA_VERSION
from bgcoor_core.testing import make_task, make_test_codec

T0 = 1_790_000_000_000
STEP = 1000
NOT_UTF8 = "CAST(x'41ff42' AS TEXT)"


@pytest_asyncio.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(str(tmp_path / "s.db"), make_test_codec())
    yield backend
    await backend.close()


def _definition(schedule_id: str) -> ScheduleDefinition:
    return ScheduleDefinition(id=schedule_id, task="sched.tick", every_ms=STEP)


def _fire(backend: SQLiteBackend, schedule_id: str, tick_ms: int, **task: object) -> Fire:
    made = make_task("sched.tick", headers={"bgcoor-tick": str(tick_ms)}, **task)
    return Fire(schedule_id, tick_ms, made, backend.to_message(made))


def _damage(backend: SQLiteBackend, sql: str, *params: object) -> None:
    """Write with a raw client, as an operator's manual fix or another program might."""
    with sqlite3.connect(backend.db.path) as conn:
        conn.execute(sql, params)


async def test_the_backend_is_its_own_schedule_store(backend: SQLiteBackend) -> None:
    assert backend.schedule_store(backend) is backend
    assert backend.schedule_store(MemoryStorage()) is None  # no one transaction with it


async def test_a_row_that_cannot_be_decoded_is_skipped_with_a_warning_naming_it(
    backend: SQLiteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    ids = ["a-good", "b-not-json", "c-not-utf8", "d-bad-state", "e-other-id", "f-good"]
    await backend.put_schedules([_definition(i) for i in ids])
    _damage(backend, "UPDATE schedules SET definition = '{not json' WHERE id = ?", ids[1])
    _damage(backend, f"UPDATE schedules SET definition = {NOT_UTF8} WHERE id = ?", ids[2])
    _damage(backend, "UPDATE schedules SET paused = 'sometimes' WHERE id = ?", ids[3])
    other = _definition("someone-else").model_dump_json()
    _damage(backend, "UPDATE schedules SET definition = ? WHERE id = ?", other, ids[4])
    with caplog.at_level(logging.WARNING, logger="bgcoor.sqlite"):
        entries = await backend.get_schedules()
    assert [e.id for e in entries] == ["a-good", "f-good"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4
    for schedule_id, message in zip(ids[1:5], warned, strict=True):
        assert message.startswith(f"schedule {schedule_id}: skipped")
    assert "someone-else" in warned[3]
    # the others still fire
    assert await backend.fire([_fire(backend, "f-good", T0)]) == [FireOutcome.FIRED]


async def test_a_failing_batch_is_rolled_back_whole(backend: SQLiteBackend) -> None:
    await backend.put_schedules([_definition("a"), _definition("b")])
    taken = make_task("sched.tick")
    await backend.enqueue_atomically([taken], [backend.to_message(taken)])
    batch = [_fire(backend, "a", T0), _fire(backend, "b", T0, id=taken.id)]
    with pytest.raises(DuplicateTaskError):
        await backend.fire(batch)
    states = {e.id: e.state for e in await backend.get_schedules()}
    assert (states["a"].last_tick_ms, states["a"].fired, states["a"].last_task_id) == (
        None,
        0,
        None,
    )
    assert batch[0].task is not None
    assert await backend.get(batch[0].task.id) is None
    assert (await backend.stats("default")).ready == 1  # only the task enqueued before
    assert await backend.fire([_fire(backend, "a", T0)]) == [FireOutcome.FIRED]


async def test_an_expired_last_task_is_not_active(backend: SQLiteBackend) -> None:
    await backend.put_schedules([_definition("s")])
    first = _fire(backend, "s", T0)
    assert await backend.fire([first]) == [FireOutcome.FIRED]
    _damage(backend, "UPDATE tasks SET expires_at = 1 WHERE status = ?", TaskStatus.PENDING.value)
    skip = _fire(backend, "s", T0 + STEP)
    skip = Fire(skip.schedule_id, skip.tick_ms, skip.task, skip.message, Overlap.SKIP)
    assert await backend.fire([skip]) == [FireOutcome.FIRED]  # its record is gone


async def test_a_version_2_file_gets_the_schedules_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    old = make_task("old.task")
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:2]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO tasks (id, name, queue, status, record) VALUES (?, ?, ?, ?, ?)",
            (old.id, old.name, old.queue, old.status.value, old.model_dump_json()),
        )
    backend = SQLiteBackend(str(path), make_test_codec())
    assert await backend.migrate() == [
        f"{path}: schema version {v}" for v in range(3, SCHEMA_VERSION + 1)
    ]
    await backend.put_schedules([_definition("nightly")])
    assert await backend.fire([_fire(backend, "nightly", T0)]) == [FireOutcome.FIRED]
    [entry] = await backend.get_schedules()
    assert (entry.id, entry.state.fired, entry.state.last_tick_ms) == ("nightly", 1, T0)
    assert await backend.get(old.id) == old  # the file's own tasks are kept
    await backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(schedules)")]
    assert columns == [
        "id",
        "definition",
        "paused",
        "since_ms",
        "last_tick_ms",
        "last_task_id",
        "buffered_tick_ms",
        "fired",
        "skipped",
        "missed",
    ]


# -- the write lock held elsewhere (a scheduler SIGSTOPped inside its fire) -------------


def _hold_write_lock(path: str) -> sqlite3.Connection:
    """A second connection holding the file's write lock, as a scheduler stopped (SIGSTOP,
    a long pause) inside its fire transaction does until it runs again."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _release(holder: sqlite3.Connection) -> None:
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


async def test_ticks_already_decided_are_answered_while_another_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    options = SQLiteOptions(busy_timeout=0.3)
    backend = SQLiteBackend(str(tmp_path / "s.db"), make_test_codec(), options)
    try:
        await backend.put_schedules([_definition("s"), _definition("paused")])
        await backend.set_schedule_paused("paused", True)
        assert await backend.fire([_fire(backend, "s", T0)]) == [FireOutcome.FIRED]
        holder = _hold_write_lock(backend.db.path)
        try:
            # what the schedulers that lost the race for a tick send: answered from a read
            stale = [_fire(backend, "s", T0), _fire(backend, "paused", T0 + STEP)]
            stale.append(_fire(backend, "gone", T0))
            assert await backend.fire(stale) == [
                FireOutcome.ALREADY,
                FireOutcome.PAUSED,
                FireOutcome.REMOVED,
            ]
            # a tick that must be written waits for the lock, and gives up as a lock wait does
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                await backend.fire([_fire(backend, "s", T0), _fire(backend, "s", T0 + STEP)])
        finally:
            _release(holder)
        assert await backend.fire([_fire(backend, "s", T0 + STEP)]) == [FireOutcome.FIRED]
        state = {e.id: e.state for e in await backend.get_schedules()}["s"]
        assert (state.fired, state.last_tick_ms) == (2, T0 + STEP)
        assert (await backend.stats("default")).ready == 2
    finally:
        await backend.close()


async def test_a_fire_waiting_for_the_lock_returns_once_its_tick_is_fired_elsewhere(
    tmp_path: Path,
) -> None:
    """Three schedulers race for a tick: the winner commits and a third takes the lock for
    its own request, then stops there. The one still waiting learns from the ledger that
    its tick is fired; it does not queue behind the stopped one."""
    options = SQLiteOptions(busy_timeout=2.0)
    backend = SQLiteBackend(str(tmp_path / "s.db"), make_test_codec(), options)
    try:
        await backend.put_schedules([_definition("s")])
        holder = _hold_write_lock(backend.db.path)
        try:
            waiting = asyncio.create_task(backend.fire([_fire(backend, "s", T0)]))
            await asyncio.sleep(0.2)  # it finds the lock taken (if later, the read answers it)
            holder.execute(
                "UPDATE schedules SET last_tick_ms = ?, fired = fired + 1 WHERE id = 's'", (T0,)
            )
            holder.execute("COMMIT")
            holder.execute("BEGIN IMMEDIATE")  # the third one, stopped while holding it
            assert await waiting == [FireOutcome.ALREADY]
        finally:
            _release(holder)
        [entry] = await backend.get_schedules()
        assert (entry.state.fired, entry.state.last_tick_ms) == (1, T0)
        assert (await backend.stats("default")).ready == 0
    finally:
        await backend.close()


# -- real processes sharing one file ---------------------------------------------------

TICKS = 200

# One scheduler process: open the file, say so, wait for the start time, then fire each
# tick when it falls due (every 2 ms), as a scheduler would, and print each outcome. Two
# of them race for every tick rather than one running ahead of the other.
_FIRER = textwrap.dedent(
    f"""
    import asyncio, json, os, sys, time
    from bgcoor_core import Fire
    from bgcoor_core.backends.sqlite import SQLiteBackend, SQLiteOptions
    from bgcoor_core.testing import make_task, make_test_codec

    async def main(path, go):
        backend = SQLiteBackend(path, make_test_codec())
        await backend.get_schedules()
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        start = float(open(go).read())
        outcomes = {{}}
        for n in range({TICKS}):
            time.sleep(max(0.0, start + n * 0.002 - time.time()))
            tick = {T0} + n * {STEP}
            task = make_task("sched.tick", headers={{"bgcoor-tick": str(tick)}})
            request = Fire("shared", tick, task, backend.to_message(task))
            [outcome] = await backend.fire([request])
            outcomes[tick] = outcome.value
        await backend.close()
        print(json.dumps(outcomes), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_two_processes_fire_each_tick_exactly_once(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    await backend.put_schedules([_definition("shared")])
    script, go = tmp_path / "firer.py", tmp_path / "go"
    script.write_text(_FIRER)
    firers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            backend.db.path,
            str(go),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for firer in firers:
            assert firer.stdout is not None
            assert (await firer.stdout.readline()).strip() == b"ready"
        ready = tmp_path / "go.tmp"  # renamed into place: never read half written
        ready.write_text(str(time.time() + 0.1))
        ready.rename(go)
        results = await asyncio.wait_for(
            asyncio.gather(*(firer.communicate() for firer in firers)), 50
        )
    finally:
        for firer in firers:
            if firer.returncode is None:
                firer.kill()
                await firer.wait()
    assert [firer.returncode for firer in firers] == [0, 0]
    outcomes = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    ticks = [str(T0 + n * STEP) for n in range(TICKS)]
    for tick in ticks:
        seen = sorted(outcome[tick] for outcome in outcomes)
        assert seen == ["already", "fired"], (tick, seen)
    [entry] = await backend.get_schedules()
    assert (entry.state.fired, entry.state.last_tick_ms) == (TICKS, T0 + (TICKS - 1) * STEP)
    assert (await backend.stats("default")).ready == TICKS
    pending = await backend.list(status=TaskStatus.PENDING, limit=1000)
    assert sorted(t.headers["bgcoor-tick"] for t in pending) == sorted(ticks)
