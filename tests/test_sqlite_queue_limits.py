"""SQLite queue limits (issue 14, item 4): what the shared ``QueueLimitContract`` cannot see.

The schema migration that adds the index the count reads (and that the count reads only
it), that an enqueue with no limits (or into no limited queue) runs the statements it ran
before, what counts as waiting (parked and deferred rows are ``ready`` rows), the paths a
limit never refuses, and producers on separate connections and in separate processes
that never take a queue past its limit, a refused batch storing nothing.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import textwrap
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlite_support import race_processes

from bgcoor_core import DuplicateTaskError, QueueFullError, Task, TaskManager, TaskStatus
from bgcoor_core._gates import GATE_HEADER, Gate
from bgcoor_core._schedules import Fire, FireOutcome, ScheduleDefinition
from bgcoor_core._unique import UNIQUE_HEADER
from bgcoor_core.backends.sqlite import SQLiteBackend
from bgcoor_core.backends.sqlite._queue_limits import WAITING, waiting
from bgcoor_core.backends.sqlite._schema import MIGRATIONS, SCHEMA_VERSION
from bgcoor_core.testing import make_task, make_test_codec

Q = "default"
NAME = "queue-limits.task"


@pytest_asyncio.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(str(tmp_path / "q.db"), make_test_codec())
    yield backend
    await backend.close()


def _tasks(n: int, queue: str = Q, **fields: Any) -> list[Task]:
    return [make_task(NAME, queue=queue, **fields) for _ in range(n)]


async def _enqueue(backend: SQLiteBackend, tasks: Sequence[Task]) -> None:
    """Records and messages in one step, as a producer enqueues them."""
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])


async def _waiting(backend: SQLiteBackend, queue: str = Q) -> int:
    return await backend.db.run(waiting, queue)


def _sql(path: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read with a raw client, as an operator or another program might."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


# -- the schema: an index that answers the count alone ------------------------------------


async def test_version_8_adds_the_index_the_count_reads_and_nothing_else(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "v7.db")
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:7]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 7")
        conn.executemany(  # a ready, a parked, a leased and a dead row of a version-7 file
            "INSERT INTO messages (id, queue, priority, seq, body, state, available_at, "
            "slot_wait) VALUES (?, 'default', 0, ?, x'00', ?, 0, ?)",
            [
                ("a", 1, "ready", 0),
                ("b", 2, "ready", 1),
                ("c", 3, "reserved", 0),
                ("d", 4, "dead", 0),
            ],
        )
    backend = SQLiteBackend(path, make_test_codec())
    try:
        assert await backend.migrate() == [
            f"{path}: schema version {v}" for v in range(8, SCHEMA_VERSION + 1)
        ]
        assert await _waiting(backend) == 2  # rows written before the index are in it
        plan = await backend.db.run(
            lambda conn: conn.execute(f"EXPLAIN QUERY PLAN {WAITING}", (Q,)).fetchall()
        )
        # one search of the index's range for the queue, no row of the table read
        assert [row[3] for row in plan] == [
            "SEARCH messages USING COVERING INDEX messages_ready (queue=? AND state=?)"
        ]
    finally:
        await backend.close()
    assert _sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


# -- the cost with no limit: none ---------------------------------------------------------


class _Trace:
    """The statements the backend's connection runs."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, statement: str) -> None:
        self.statements.append(statement)

    def take(self) -> list[str]:
        taken, self.statements = self.statements, []
        return taken


async def _traced(backend: SQLiteBackend) -> _Trace:
    trace = _Trace()

    def install(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(trace)

    await backend.db.run(install)
    return trace


def _verbs(statements: list[str]) -> list[str]:
    return [s.split()[0] for s in statements]


def _is_count(statement: str) -> bool:
    return statement.startswith("SELECT count(*) FROM messages WHERE queue = ")


async def _producer_steps(backend: SQLiteBackend, trace: _Trace, queue: str) -> list[list[str]]:
    """The statements of each producer step into ``queue``: an atomic enqueue of three,
    a push of one, a unique-key enqueue of two."""
    steps = []
    await _enqueue(backend, _tasks(3, queue))
    steps.append(trace.take())
    await backend.push_many(_tasks(1, queue))
    steps.append(trace.take())
    keyed = _tasks(2, queue)
    for task in keyed:
        task.headers[UNIQUE_HEADER] = f"key-{task.id}"
    uniques = backend.unique_store(backend)
    assert uniques is not None
    assert await uniques.enqueue_unique(keyed, [backend.to_message(t) for t in keyed]) == [
        None,
        None,
    ]
    steps.append(trace.take())
    return steps


async def test_with_no_limit_a_producer_runs_the_statements_it_ran_before(
    backend: SQLiteBackend,
) -> None:
    trace = await _traced(backend)
    steps = [_verbs(step) for step in await _producer_steps(backend, trace, Q)]
    # as measured on the backend before queue limits existed (commit b731491), by row
    assert steps == [
        ["BEGIN", *["INSERT"] * 3, "INSERT", *["INSERT"] * 3, "COMMIT"],
        ["BEGIN", "INSERT", "INSERT", "COMMIT"],
        # the two holders read; the messages, their queue, the records, the keys
        ["BEGIN", "SELECT", "SELECT", "INSERT", "INSERT", "INSERT", *["INSERT"] * 4, "COMMIT"],
    ]
    # limits on other queues: an enqueue that adds to none of them counts nothing
    backend.queue_limits = {"elsewhere": 5}
    assert [_verbs(step) for step in await _producer_steps(backend, trace, Q)] == steps


async def test_a_limited_queue_costs_one_count_inside_the_transaction(
    backend: SQLiteBackend,
) -> None:
    trace = await _traced(backend)
    unlimited = await _producer_steps(backend, trace, "free")
    backend.queue_limits = {Q: 100}
    limited = await _producer_steps(backend, trace, Q)
    for before, after in zip(unlimited, limited, strict=True):
        counts = [i for i, s in enumerate(after) if _is_count(s)]
        assert len(counts) == 1  # one count per limited queue in the batch
        assert after[0] == "BEGIN IMMEDIATE"  # the write lock held from the start
        assert after[-1] == "COMMIT"
        assert _verbs(after[: counts[0]] + after[counts[0] + 1 :]) == _verbs(before)
    # a batch for two limited queues counts each once
    backend.queue_limits = {Q: 100, "free": 100}
    await _enqueue(backend, [*_tasks(2), *_tasks(2, "free")])
    assert sorted(s for s in trace.take() if _is_count(s)) == [
        "SELECT count(*) FROM messages WHERE queue = 'default' AND state = 'ready'",
        "SELECT count(*) FROM messages WHERE queue = 'free' AND state = 'ready'",
    ]


# -- what is waiting: every ready row, parked and deferred ones too -----------------------


async def test_parked_and_deferred_messages_wait_leased_and_dead_ones_do_not(
    backend: SQLiteBackend,
) -> None:
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    await _enqueue(backend, _tasks(2, eta=later))  # scheduled
    slots = _tasks(3)
    rated = _tasks(2, queue="rated")
    for task in slots:
        task.headers[GATE_HEADER] = Gate("qk", concurrency=1).encode()
    for task in rated:
        task.headers[GATE_HEADER] = Gate("qr", 30.0).encode()  # the second waits 30 s
    await _enqueue(backend, slots)
    await _enqueue(backend, rated)
    [held] = await backend.reserve([Q], lease=30, limit=3)  # the other two park
    assert _sql(backend.db.path, "SELECT count(*) FROM messages WHERE slot_wait != 0") == [(2,)]
    await backend.dead_letter(held, "poisoned")
    [taken] = await backend.reserve(["rated"], lease=30, limit=2)  # the other is deferred
    assert await _waiting(backend) == 4  # 2 scheduled + 2 parked; the dead one is not
    assert await _waiting(backend, "rated") == 1  # the leased one is not
    stats = await backend.stats(Q)
    assert await _waiting(backend) == stats.ready + stats.scheduled
    await backend.ack(taken)
    assert await _waiting(backend, "rated") == 1


async def test_a_full_queue_is_refused_whole_and_a_duplicate_is_still_that(
    backend: SQLiteBackend,
) -> None:
    backend.queue_limits = {Q: 3}
    first = _tasks(3)
    await _enqueue(backend, first)
    refused = [*_tasks(1), *_tasks(1, "unlimited")]
    with pytest.raises(QueueFullError, match=r"queue 'default' is full \(limit 3"):
        await _enqueue(backend, refused)
    assert [await backend.get(t.id) for t in refused] == [None, None]
    assert await backend.queues() == [Q]  # not even the other queue's name was kept
    # the same batch again (a retry after a lost reply) is a duplicate, full queue or not:
    # that is how the manager tells an enqueue that went through
    with pytest.raises(DuplicateTaskError, match=first[0].id):
        await _enqueue(backend, first)
    [taken] = await backend.reserve([Q], lease=30, limit=1)
    await backend.ack(taken)  # its message is gone, its record stays
    with pytest.raises(DuplicateTaskError, match=taken.task.id):
        await _enqueue(backend, [taken.task.model_copy(update={"status": TaskStatus.PENDING})])
    await _enqueue(backend, _tasks(1))  # the room the ack made, exactly
    with pytest.raises(QueueFullError):
        await backend.push_many(_tasks(1))


# -- what a limit never refuses: the work was accepted already ----------------------------


async def test_hand_backs_dead_letters_put_back_and_schedule_fires_pass_a_full_queue(
    backend: SQLiteBackend,
) -> None:
    backend.queue_limits = {Q: 2}
    await _enqueue(backend, _tasks(2))
    [first] = await backend.reserve([Q], lease=30, limit=1)
    await _enqueue(backend, _tasks(1))  # the leased one made room
    await backend.nack(first)  # a retry is never refused
    assert await _waiting(backend) == 3
    [second] = await backend.reserve([Q], lease=30, limit=1)
    await backend.dead_letter(second, "poisoned")
    assert await _waiting(backend) == 2
    assert await backend.requeue_dead(Q) == [second.task.id]  # put back past the limit
    assert await _waiting(backend) == 3
    fired = make_task(NAME, headers={"bgcoor-tick": "1"})
    await backend.put_schedules([ScheduleDefinition(id="s", task=NAME, every_ms=1000)])
    fire = Fire("s", 1_790_000_000_000, fired, backend.to_message(fired))
    assert await backend.fire([fire]) == [FireOutcome.FIRED]
    assert await _waiting(backend) == 4
    with pytest.raises(QueueFullError):  # a producer still is
        await backend.push_many(_tasks(1))


# -- producers racing for a queue's last places -------------------------------------------

PRODUCERS = 16
ROUNDS = 8
LIMIT = 50


async def test_producers_on_separate_connections_never_pass_the_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    producers = [SQLiteBackend(path, make_test_codec()) for _ in range(PRODUCERS)]
    for producer in producers:
        producer.queue_limits = {Q: LIMIT}
    await producers[0].stats(Q)  # the file created once, before the race
    accepted: list[Task] = []
    refused: list[Task] = []

    async def produce(producer: SQLiteBackend, seed: int) -> None:
        sizes = random.Random(seed)
        for _ in range(ROUNDS):
            batch = _tasks(sizes.randint(1, 3))
            try:
                await _enqueue(producer, batch)
            except QueueFullError:
                refused.extend(batch)
            else:
                accepted.extend(batch)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(produce(p, n) for n, p in enumerate(producers))), 60
        )
        checker = producers[0]
        assert refused  # the race reached the limit
        assert await _waiting(checker) == len(accepted) <= LIMIT
        ids = {row[0] for row in _sql(path, "SELECT id FROM messages")}
        records = {row[0] for row in _sql(path, "SELECT id FROM tasks")}
        assert ids == records == {t.id for t in accepted}  # a refused batch stored nothing
        while True:  # whatever room the race left is there, one by one, and no more
            try:
                await _enqueue(checker, _tasks(1))
            except QueueFullError:
                break
        assert await _waiting(checker) == LIMIT
    finally:
        for producer in producers:
            await producer.close()


# Enqueues batches of 1-3 into a queue limited to LIMIT until it was refused ROUNDS times;
# prints "+ <id>" for each task enqueued and "- <id>" for each refused one.
_PRODUCER = textwrap.dedent(
    """
    import asyncio, os, random, sys, time
    from bgcoor_core import QueueFullError
    from bgcoor_core.backends.sqlite import SQLiteBackend
    from bgcoor_core.testing import make_task, make_test_codec

    async def main(path, go, seed, limit, rounds):
        backend = SQLiteBackend(path, make_test_codec())
        backend.queue_limits = {"default": int(limit)}
        await backend.stats("default")
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        sizes, refusals = random.Random(int(seed)), 0
        while refusals < int(rounds):
            batch = [make_task("queue-limits.task") for _ in range(sizes.randint(1, 3))]
            try:
                await backend.enqueue_atomically(batch, [backend.to_message(t) for t in batch])
            except QueueFullError:
                refusals += 1
                sign = "-"
            else:
                sign = "+"
            for task in batch:
                print(sign, task.id, flush=True)
        await backend.close()

    asyncio.run(main(*sys.argv[1:]))
    """
)
PROCESSES = 3
PROCESS_LIMIT = 300  # room for many batches, so that every process is in the race before it is full


async def test_processes_sharing_the_file_never_pass_the_limit(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    await backend.stats(Q)
    extras = [[str(seed), str(PROCESS_LIMIT), "3"] for seed in range(PROCESSES)]
    outs = await race_processes(_PRODUCER, backend.db.path, tmp_path, extras)
    lines = [line.split() for out in outs for line in out.splitlines()]
    accepted = {task_id for sign, task_id in lines if sign == "+"}
    assert sum(1 for out in outs if "+" in out) > 1  # more than one got in
    assert await _waiting(backend) == len(accepted) <= PROCESS_LIMIT
    path = backend.db.path
    ids = {row[0] for row in _sql(path, "SELECT id FROM messages")}
    assert ids == {row[0] for row in _sql(path, "SELECT id FROM tasks")} == accepted


# -- through the manager: a producer waits for a worker to make room ----------------------


async def test_a_waiting_producer_gets_in_once_a_worker_takes_a_task(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    manager = TaskManager(
        broker_url=url,
        storage_url=url,
        queue_limits={"emails": 2},
        queue_full="wait",
        queue_full_timeout=10.0,
    )

    @manager.task(name="jobs.mail", queue="emails")
    def mail(n: int) -> None: ...

    await mail.enqueue(0)
    await mail.enqueue(1)
    third = asyncio.create_task(mail.enqueue(2))
    await asyncio.sleep(0.2)
    assert not third.done()  # waiting for room, nothing stored yet
    assert (await manager.storage.counts())[TaskStatus.PENDING] == 2
    [taken] = await manager.broker.reserve(["emails"], lease=30, limit=1)
    handle = await asyncio.wait_for(third, 5)
    assert (await manager.get(handle.id)).status is TaskStatus.PENDING
    await manager.broker.ack(taken)
    await manager.close()
