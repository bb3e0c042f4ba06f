"""Corrupt state (issue 10, class 1): a key or field written by something else costs at most
its one task. Each test damages what the backend stored, as an operator's manual fix or an
older version's bug would, then checks that the good tasks beside it still flow, that the
bad one comes back as a defect (so a worker dead-letters it) and that nothing fails whole.

The worker-process version of these is ``tests/reliability/corrupt_redis.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgcoor_core import (
    CorruptRecordError,
    DuplicateTaskError,
    InvalidTransitionError,
    Reservation,
    Task,
    TaskManager,
    TaskStatus,
)
from bgcoor_core.testing import make_task

pytestmark = pytest.mark.server

Q = "default"
LEASE = 30.0


def key(backend: RedisBackend, *parts: str) -> str:
    return backend.key(*parts)


async def enqueue(backend: RedisBackend, count: int) -> list[Task]:
    tasks = [make_task(payload={"n": n}) for n in range(count)]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    return tasks


async def reserve_all(backend: RedisBackend, lease: float = LEASE) -> list[Reservation]:
    return await backend.reserve([Q], lease=lease, limit=100)


def split(taken: list[Reservation]) -> tuple[set[str], dict[str, str]]:
    """The ids of the sound reservations, and what is wrong with each defect, by id."""
    good = {r.task.id for r in taken if r.defect is None}
    bad = {r.task.id: r.defect for r in taken if r.defect is not None}
    return good, bad


async def snapshot(raw: aredis.Redis, backend: RedisBackend) -> dict[bytes, object]:
    """Every key of the backend's namespace with its value and TTL."""
    read = {
        b"string": raw.get,
        b"hash": raw.hgetall,
        b"zset": lambda k: raw.zrange(k, 0, -1, withscores=True),
        b"set": raw.smembers,
        b"list": lambda k: raw.lrange(k, 0, -1),
    }
    found: dict[bytes, object] = {}
    async for k in raw.scan_iter(f"{backend.prefix}:*"):
        found[k] = (await read[await raw.type(k)](k), await raw.pttl(k) > 0)
    return found


# -- a message that cannot be read ----------------------------------------------------------

# Damage to the victim's message hash, and a word the defect must name.
MESSAGE_DAMAGE: dict[str, tuple[Callable[[aredis.Redis, str], Awaitable[object]], str]] = {
    "no-hash": (lambda r, k: r.delete(k), "is missing"),
    "no-body": (lambda r, k: r.hdel(k, "b"), "no body"),
    "deliveries-text": (lambda r, k: r.hset(k, "d", "many"), "delivery count"),
    "deliveries-huge": (lambda r, k: r.hset(k, "d", "9223372036854775807"), "delivery count"),
    "lost-text": (lambda r, k: r.hset(k, "l", "x"), "lost count"),
    "priority-text": (lambda r, k: r.hset(k, "p", "high"), "priority"),
    "priority-out-of-range": (lambda r, k: r.hset(k, "p", "5000"), "priority"),
    "order-text": (lambda r, k: r.hset(k, "o", "first"), "ready score"),
    "queue-other": (lambda r, k: r.hset(k, "q", "elsewhere"), "queue"),
    "queue-missing": (lambda r, k: r.hdel(k, "q"), "queue"),
    "not-a-hash": (lambda r, k: _replace(r, k, "junk"), "not a hash"),
    "gate-junk": (lambda r, k: r.hset(k, "g", "junk"), 'gate g "junk"'),
    "gate-no-key": (lambda r, k: r.hset(k, "g", "0.5 1 -"), "gate g"),
}


async def _replace(raw: aredis.Redis, name: str, value: str) -> None:
    await raw.delete(name)
    await raw.set(name, value)


@pytest.mark.parametrize("damage", MESSAGE_DAMAGE)
async def test_an_unreadable_message_is_a_defect_beside_good_ones(
    backend: RedisBackend, raw: aredis.Redis, damage: str
) -> None:
    """Before: a missing hash lost the good tasks popped with it, a missing body failed
    every reserve, a bad counter made the message vanish; a bad priority or order failed
    a later reserve (a lease running out, a delay falling due)."""
    tasks = await enqueue(backend, 5)
    victim = tasks[2]
    apply, words = MESSAGE_DAMAGE[damage]
    await apply(raw, key(backend, "m", victim.id))
    good, bad = split(await reserve_all(backend))
    assert good == {t.id for t in tasks} - {victim.id}
    assert list(bad) == [victim.id]
    assert bad[victim.id].startswith("corrupt message: ")
    assert words in bad[victim.id]
    await _dead_letter_it(backend, victim.id, bad[victim.id])


async def _dead_letter_it(backend: RedisBackend, task_id: str, reason: str) -> None:
    """The defect is leased like any message: a worker can dead-letter it with its reason,
    and an operator can requeue it."""
    stats = await backend.stats(Q)
    assert (stats.ready, stats.reserved) == (0, 5)
    taken = await backend.reserve([Q], lease=LEASE, limit=1)  # nothing else is ready
    assert taken == []
    held = Reservation(Task.model_construct(id=task_id, name="<corrupt>", queue=Q), "x")
    reservation = await _reservation_of(backend, task_id, held)
    await backend.dead_letter(reservation, reason)
    letters = await backend.dead_letters(Q)
    assert [(d.id, d.reason) for d in letters] == [(task_id, reason)]
    assert await backend.requeue_dead(Q) == [task_id]
    # back with sound counters: it runs if its body is sound, else it is a defect again
    assert [r.task.id for r in await reserve_all(backend)] == [task_id]


async def _reservation_of(
    backend: RedisBackend, task_id: str, fallback: Reservation
) -> Reservation:
    """The lease token the reserve gave the defect (read back from its message hash)."""
    token = await backend.command("HGET", backend.key("m", task_id), "t")
    assert token, "the defect is not leased"
    return Reservation(fallback.task, token.decode(), defect="x")


@pytest.mark.parametrize("where", ["ready", "later", "leased"])
async def test_an_id_whose_message_is_gone_costs_only_itself(
    backend: RedisBackend, raw: aredis.Redis, where: str
) -> None:
    """Before: an id in the ready set without its hash lost the good tasks popped beside
    it (left pending, in no set); one in the scheduled or leased set failed every reserve."""
    tasks = await enqueue(backend, 4)
    ghost = make_task()
    await backend.save(ghost)  # its record exists: the worker marks it dead
    score = 0 if where == "ready" else time.time() - 10
    await raw.zadd(key(backend, "q", Q, where), {ghost.id: score})
    good, bad = split(await reserve_all(backend))
    assert good == {t.id for t in tasks}
    assert list(bad) == [ghost.id]
    assert "is missing" in bad[ghost.id]
    assert (await backend.stats(Q)).reserved == 5


async def test_a_lease_running_out_on_a_bad_counter_is_a_defect(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """Before: the lost count of an expired lease was incremented with HINCRBY, which
    failed the reserve (every reserve) on a count that was not a number."""
    tasks = await enqueue(backend, 3)
    first = await backend.reserve([Q], lease=0.05, limit=1)
    victim = first[0].task.id
    await raw.hset(key(backend, "m", victim), mapping={"l": "lots", "p": "x"})
    await asyncio.sleep(0.1)
    good, bad = split(await reserve_all(backend))
    assert good == {t.id for t in tasks} - {victim}
    assert list(bad) == [victim]


# -- a record that cannot be read -----------------------------------------------------------


async def test_a_record_with_an_unknown_status_is_a_defect(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """Before: the reserve left it alone, the worker's write was refused, and the message
    was acknowledged: the task was silently never run."""
    tasks = await enqueue(backend, 3)
    victim = tasks[1]
    await raw.hset(key(backend, "t", victim.id), "s", "zombie")
    good, bad = split(await reserve_all(backend))
    assert good == {tasks[0].id, tasks[2].id}
    assert 'status "zombie"' in bad[victim.id]
    with pytest.raises(CorruptRecordError, match="zombie"):
        await backend.get(victim.id)
    counts = await backend.counts()
    assert set(counts) == set(TaskStatus)
    assert counts[TaskStatus.RUNNING] == 2
    assert [t.id for t in await backend.list()] == [tasks[0].id, tasks[2].id]


async def test_an_unknown_status_may_only_become_dead(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """``FROM_UNKNOWN_STATUS`` compiled into the scripts' transition table."""
    task = make_task()
    await backend.save(task)
    await raw.hset(key(backend, "t", task.id), "s", "")
    for status in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCEEDED):
        with pytest.raises(InvalidTransitionError):
            await backend.save(task.model_copy(update={"status": status}))
    dead = Task.model_construct(
        id=task.id, name=task.name, queue=task.queue, status=TaskStatus.DEAD, error="corrupt"
    )
    await backend.save(dead)
    stored = await backend.get(task.id)
    assert stored is not None
    assert (stored.status, stored.error) == (TaskStatus.DEAD, "corrupt")


async def test_a_record_key_that_is_not_a_hash(backend: RedisBackend, raw: aredis.Redis) -> None:
    """Before: the reserve's HMGET on it failed every reserve, after popping."""
    tasks = await enqueue(backend, 3)
    victim = tasks[0]
    record = key(backend, "t", victim.id)
    await raw.delete(record)
    await raw.rpush(record, "junk")
    good, bad = split(await reserve_all(backend))
    assert good == {tasks[1].id, tasks[2].id}
    assert "not a hash" in bad[victim.id]
    with pytest.raises(CorruptRecordError, match="not a hash"):
        await backend.get(victim.id)
    with pytest.raises(CorruptRecordError, match="not a hash"):
        await backend.save(victim.model_copy(update={"status": TaskStatus.PENDING}))
    placeholder = Task.model_construct(
        id=victim.id, name="unknown", queue=Q, status=TaskStatus.DEAD, error="corrupt"
    )
    await backend.save(placeholder)  # a dead placeholder replaces it
    stored = await backend.get(victim.id)
    assert stored is not None
    assert stored.status is TaskStatus.DEAD
    assert [t.id for t in await backend.list(status=TaskStatus.DEAD)] == [victim.id]


# Damage to a stored record's hash that get() must report as CorruptRecordError.
RECORD_DAMAGE = {
    "json-garbage": {"j": b"{not json"},
    "json-invalid-utf8": {"j": b'{"id": "\xff\xfe"}'},
    "started-garbage": {"r": b"yesterday pending ", "k": b"+t"},
    "token-without-plus": {"r": b"1.5 pending ", "k": b"t"},
    "status-disagrees-with-json": {"s": b"succeeded"},
}


@pytest.mark.parametrize("damage", RECORD_DAMAGE)
async def test_get_and_list_on_a_corrupt_record(
    backend: RedisBackend, raw: aredis.Redis, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: get raised a raw DecodeError or ValueError, and one bad record failed every
    page of list()."""
    good, victim = make_task(), make_task()
    await backend.save(good)
    await backend.save(victim)
    await raw.hset(key(backend, "t", victim.id), mapping=RECORD_DAMAGE[damage])
    with pytest.raises(CorruptRecordError, match=victim.id):
        await backend.get(victim.id)
    with caplog.at_level(logging.WARNING, logger="bgcoor.redis"):
        assert [t.id for t in await backend.list()] == [good.id]
    assert victim.id in caplog.text
    assert (await backend.counts())[TaskStatus.PENDING] == 2


# -- keys of the wrong type ----------------------------------------------------------------

WRONG_TYPE = ["wake", "ready", "later", "queues", "seq", "all", "status", "name", "expmeta"]


def _wrong_type_key(backend: RedisBackend, which: str, task: Task) -> str:
    return {
        "wake": key(backend, "q", Q, "wake"),
        "ready": key(backend, "q", Q, "ready"),
        "later": key(backend, "q", Q, "later"),
        "queues": key(backend, "queues"),
        "seq": key(backend, "seq"),
        "all": key(backend, "i", "all"),
        "status": key(backend, "i", "s", "pending"),
        "name": key(backend, "i", "n", task.name),
        "expmeta": key(backend, "i", "expmeta"),
    }[which]


@pytest.mark.parametrize("which", WRONG_TYPE)
async def test_enqueue_over_a_key_of_the_wrong_type(
    backend: RedisBackend, raw: aredis.Redis, which: str
) -> None:
    """Before: the enqueue failed after writing the record (and more), every time."""
    task = make_task()
    bad = _wrong_type_key(backend, which, task)
    await raw.set(bad, "junk") if which != "seq" else await raw.lpush(bad, "junk")
    delayed = make_task(eta=time.time() + 0.05)
    tasks = [task, delayed]
    await backend.enqueue_atomically(tasks, [backend.to_message(t) for t in tasks])
    await asyncio.sleep(0.06)
    taken = await reserve_all(backend)
    assert {r.task.id for r in taken if r.defect is None} == {task.id, delayed.id}
    assert all(r.started for r in taken)
    if which != "seq":
        assert await raw.type(bad) in (b"none", b"zset", b"list", b"set", b"hash")


async def test_a_sequence_counter_that_is_not_a_number_restarts_above_every_push(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    first = await enqueue(backend, 2)
    await raw.set(key(backend, "seq"), "twelve")
    later = await enqueue(backend, 2)
    taken = await reserve_all(backend)
    assert [r.task.id for r in taken] == [t.id for t in (*first, *later)]  # FIFO kept


@pytest.mark.parametrize("which", ["ready", "later", "leased", "dead", "wake"])
async def test_reserve_and_settle_over_a_queue_key_of_the_wrong_type(
    backend: RedisBackend, raw: aredis.Redis, which: str
) -> None:
    """Before: a wrong-typed later or leased set failed every reserve; a wrong-typed dead
    set failed the dead letter after it had unleased the message (lost, in no set)."""
    tasks = await enqueue(backend, 3)
    bad = key(backend, "q", Q, which)
    if which == "ready":
        kept = await backend.reserve([Q], lease=LEASE, limit=3)  # safe from the damage
        await raw.delete(bad)
    else:
        kept = []
    await raw.set(bad, "junk")
    taken = kept or await reserve_all(backend)
    assert {r.task.id for r in taken} == {t.id for t in tasks}
    await backend.dead_letter(taken[0], "failed for good")
    await backend.nack(taken[1])
    assert [d.id for d in await backend.dead_letters(Q)] == [taken[0].task.id]
    stats = await backend.stats(Q)
    assert (stats.ready, stats.reserved, stats.dead) == (1, 1, 1)


async def test_a_wake_list_of_the_wrong_type_does_not_make_waits_spin(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """Before: BLPOP failed at once on it, so a waiting consumer spun through round trips
    for its whole timeout."""
    await enqueue(backend, 1)
    assert len(await reserve_all(backend)) == 1  # now the queue is drained
    await raw.set(key(backend, "q", Q, "wake"), "junk")
    blocking = backend.link().blocking
    before = blocking.exchanges
    assert await backend.reserve([Q], lease=LEASE, timeout=0.5) == []
    assert blocking.exchanges - before < 20
    assert await raw.type(key(backend, "q", Q, "wake")) == b"none"


async def test_status_reads_answer_over_keys_of_the_wrong_type(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    await enqueue(backend, 2)
    for part in (("queues",), ("i", "s", "pending"), ("q", Q, "dead"), ("q", Q, "leased")):
        await raw.delete(key(backend, *part))
        await raw.set(key(backend, *part), "junk")
    assert await backend.queues() == []
    assert (await backend.counts())[TaskStatus.PENDING] == 0
    assert (await backend.stats(Q)).ready == 2
    assert await backend.dead_letters(Q) == []


# -- reusing an id -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.PENDING])
async def test_enqueue_refuses_an_id_with_a_record_and_leaves_nothing_behind(
    backend: RedisBackend, raw: aredis.Redis, status: TaskStatus
) -> None:
    """Before: a finished task's id was accepted again; its new message was then acked
    without running."""
    old = make_task()
    await backend.save(old.model_copy(update={"status": status}))
    before = await snapshot(raw, backend)
    batch = [make_task(), old, make_task()]
    with pytest.raises(DuplicateTaskError, match=f"{old.id}.*{status.value}"):
        await backend.enqueue_atomically(batch, [backend.to_message(t) for t in batch])
    with pytest.raises(DuplicateTaskError, match=old.id):
        await backend.save_many([make_task(), old])
    assert await snapshot(raw, backend) == before


async def test_a_record_of_the_wrong_type_refuses_its_id(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    task = make_task()
    await raw.set(key(backend, "t", task.id), "junk")
    before = await snapshot(raw, backend)
    with pytest.raises(DuplicateTaskError, match="unreadable"):
        await backend.enqueue_atomically([task], [backend.to_message(task)])
    assert await snapshot(raw, backend) == before


# -- end to end, in process ----------------------------------------------------------------


@pytest.mark.parametrize(
    "damage", ["no-hash", "no-body", "deliveries-text", "gate-junk", "zombie-status"]
)
async def test_a_worker_dead_letters_the_victim_and_runs_the_rest(
    redis_url: str, raw: aredis.Redis, damage: str
) -> None:
    manager = TaskManager(broker_url=redis_url, storage_url=redis_url)
    ran: list[int] = []

    @manager.task(name="corrupt.work")
    async def work(n: int) -> int:
        ran.append(n)
        return n

    handles = [await work.enqueue(n) for n in range(6)]
    victim = handles[3]
    backend = manager.broker
    assert isinstance(backend, RedisBackend)
    if damage == "zombie-status":
        await raw.hset(key(backend, "t", victim.id), "s", "zombie")
    else:
        await MESSAGE_DAMAGE[damage][0](raw, key(backend, "m", victim.id))
    async with manager.worker(concurrency=2):
        for handle in handles:
            if handle is not victim:
                assert await handle.result(timeout=10) == handles.index(handle)
        for _ in range(200):
            if (await backend.stats(Q)).dead == 1:
                break
            await asyncio.sleep(0.02)
    assert sorted(ran) == [0, 1, 2, 4, 5]
    letters = await backend.dead_letters(Q)
    assert [d.id for d in letters] == [victim.id]
    assert letters[0].reason.startswith("corrupt ")
    await manager.close()


# -- any value in any field ------------------------------------------------------------------

FIELDS = ["q", "b", "d", "l", "p", "o", "t", "r", "x", "g", "a"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(field=st.sampled_from(FIELDS), value=st.binary(max_size=24))
def test_any_value_in_any_message_field_costs_at_most_that_message(
    redis_url: str, field: str, value: bytes
) -> None:
    """Whatever bytes stand in a field of the victim's message hash, one reserve hands out
    every good task, and the victim either sound or as a defect; nothing fails."""

    async def check() -> None:
        backend = RedisBackend(f"{redis_url}-{uuid.uuid4().hex[:8]}")
        raw = aredis.Redis.from_url(redis_url.split("?", 1)[0])
        try:
            tasks = await enqueue(backend, 3)
            victim = tasks[1]
            await raw.hset(key(backend, "m", victim.id), field, value)
            taken = await reserve_all(backend)
            good, bad = split(taken)
            assert good | set(bad) == {t.id for t in tasks}
            assert set(bad) <= {victim.id}
            for reservation in taken:  # every one of them can be settled
                if reservation.defect is None:
                    await backend.ack(reservation)
                else:
                    await backend.dead_letter(reservation, reservation.defect)
            stats = await backend.stats(Q)
            assert (stats.ready, stats.reserved, stats.dead) == (0, 0, len(bad))
        finally:
            keys = [k async for k in raw.scan_iter(f"{backend.prefix}:*")]
            if keys:
                await raw.delete(*keys)
            await raw.aclose()
            await backend.close()

    asyncio.run(check())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    field=st.sampled_from(["s", "k", "n", "q", "j", "x", "r", "u"]), value=st.binary(max_size=24)
)
def test_any_value_in_any_record_field_costs_at_most_that_task(
    redis_url: str, field: str, value: bytes
) -> None:
    """Whatever bytes stand in a field of the victim's record, the reserve hands out every
    task (the victim perhaps as a defect), reads answer or raise CorruptRecordError, and
    the worker's dead write always lands."""

    async def check() -> None:
        backend = RedisBackend(f"{redis_url}-{uuid.uuid4().hex[:8]}")
        raw = aredis.Redis.from_url(redis_url.split("?", 1)[0])
        try:
            tasks = await enqueue(backend, 3)
            victim = tasks[1]
            await raw.hset(key(backend, "t", victim.id), field, value)
            good, bad = split(await reserve_all(backend))
            assert good | set(bad) == {t.id for t in tasks}
            assert set(bad) <= {victim.id}
            with contextlib.suppress(CorruptRecordError):  # either is fine; nothing else
                await backend.get(victim.id)
            assert {t.id for t in await backend.list()} >= {tasks[0].id, tasks[2].id}
            assert set(await backend.counts()) == set(TaskStatus)
            dead = Task.model_construct(
                id=victim.id, name="bgcoor.corrupt", queue=Q, status=TaskStatus.DEAD, error="x"
            )
            await backend.save(dead)
            stored = await backend.get(victim.id)
            assert stored is not None
            assert stored.status is TaskStatus.DEAD
        finally:
            keys = [k async for k in raw.scan_iter(f"{backend.prefix}:*")]
            if keys:
                await raw.delete(*keys)
            await raw.aclose()
            await backend.close()

    asyncio.run(check())


async def test_an_id_that_is_not_utf8_is_dead_lettered_by_the_reserve(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """Before: decoding the reserve's reply failed, so every reserve failed."""
    tasks = await enqueue(backend, 2)
    bad = b"\xff\xfe-not-text"
    await raw.hset(key(backend, "m").encode() + b":" + bad, mapping={"q": Q, "b": b"x"})
    await raw.hset(key(backend, "m").encode() + b":" + bad, mapping={"d": 0, "l": 0, "p": 0})
    await raw.hset(key(backend, "m").encode() + b":" + bad, "o", 0)
    await raw.zadd(key(backend, "q", Q, "ready"), {bad: 0})
    taken = await reserve_all(backend)
    assert {r.task.id for r in taken} == {t.id for t in tasks}
    for _ in range(100):
        if (await backend.stats(Q)).dead == 1:
            break
        await asyncio.sleep(0.01)
    letters = await backend.dead_letters(Q)
    assert [d.reason for d in letters] == ["corrupt message: its id is not UTF-8"]
    assert (await backend.stats(Q)).reserved == 2
